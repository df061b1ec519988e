"""Helpers for the server tests: a dispatcher without sockets, a server process, and a raw REQ
client speaking ``autolrs.wire.protocol`` (every receive has a timeout)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import zmq

from autolrs.actions import Observation
from autolrs.wire import messages, protocol
from autolrs.server.config import load_config
from autolrs.server.dispatcher import Dispatcher
from autolrs.server.process import READY_PREFIX, ServerProcess  # noqa: F401  (re-exported for tests)
from autolrs.server.sessions import SessionStore

TIMEOUT_S = 5.0


def admin_token(state_dir) -> str:
    """The admin token a server made in its state dir (``status`` lists every job in full with it)."""
    return (Path(state_dir) / "admin.token").read_text().strip()


def make_config(state_dir, tuners=None, **server):
    overrides = {"server": {"port": 0, "state_dir": str(state_dir), **server}}
    if tuners:
        overrides["tuners"] = tuners
    return load_config(overrides=overrides)


#: ``credential=OWN`` (the default): the job's credential as its creating hello returned it.
OWN = object()


class DispatcherHarness:
    """Calls a dispatcher with envelopes built by ``autolrs.wire.protocol``; returns decoded
    replies. Job requests carry the job's credential (remembered from the hello reply that
    created the job) unless ``credential=`` says otherwise; ``status`` is the admin's unless
    ``admin=False``."""

    def __init__(self, state_dir: Path, tuners=None):
        self.state_dir = Path(state_dir)
        self.config = make_config(state_dir, tuners)
        self.store = SessionStore(state_dir)
        self.dispatcher = Dispatcher(self.config, self.store)
        self.admin_token = (self.state_dir / "admin.token").read_text().strip()
        self.credentials: dict[str, str] = {}

    def raw(self, frame: bytes, peer=None) -> dict:
        reply = protocol.loads(self.dispatcher.handle(frame, peer))
        body = reply.get("body") or {}
        if reply.get("type") == "hello_reply" and body.get("credential"):
            self.credentials[reply["job_id"]] = body["credential"]
        return reply

    def frame(self, kind, body=None, *, job_id=None, client_id=None, seq=None, credential=None) -> bytes:
        return protocol.dumps(protocol.request(kind, body, job_id=job_id, client_id=client_id, seq=seq,
                                               credential=credential))

    def call(self, kind, body=None, *, job_id="job-1", client_id="client-a", seq=0, credential=OWN, admin=True,
             peer=None) -> dict:
        if kind in protocol.JOB_KINDS:
            if credential is OWN:
                credential = self.credentials.get(job_id)
            return self.raw(self.frame(kind, body, job_id=job_id, client_id=client_id, seq=seq,
                                       credential=credential), peer)
        return self.raw(self.frame(kind, body, credential=self.admin_token if admin else None), peer)

    def restart(self) -> "DispatcherHarness":
        """A fresh dispatcher and store on the same state dir (as after a server restart); the
        trainers keep their credentials."""
        self.store.close()
        fresh = DispatcherHarness(self.state_dir, dict(self.config.tuners) or None)
        fresh.credentials = dict(self.credentials)
        return fresh

    def decisions(self, job_id="job-1") -> list[dict]:
        path = self.state_dir / "jobs" / job_id / "decisions.jsonl"
        return [protocol.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []




def hello_body(tuner="cosine", config=None, *, initial_lr=0.1, max_steps=None, step=0, seed=None,
               has_val_fn=False):
    return messages.Hello(tuner, {} if config is None else config, initial_lr=initial_lr, step=step,
                          max_steps=max_steps, has_val_fn=has_val_fn, seed=seed).to_body()


def report_body(step, steps, losses=None, evals=None):
    observation = Observation(step=step, steps=steps, losses=[1.0] * steps if losses is None else losses,
                              evals=evals or [])
    return messages.Report(observation).to_body()


class ReqClient:
    """One REQ socket with send/receive timeouts; a timeout fails the test instead of hanging.
    Job requests carry the credential its hellos were given (``credentials``, by job id);
    ``source`` connects from that local address (another peer on the same machine)."""

    def __init__(self, endpoint: str, timeout: float = TIMEOUT_S, client_id: str | None = None,
                 source: str | None = None):
        self.endpoint = endpoint
        self.client_id = client_id or uuid.uuid4().hex[:16]
        self.credentials: dict[str, str] = {}
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        self.sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        self.sock.connect(endpoint if source is None else endpoint.replace("tcp://", f"tcp://{source}:0;", 1))

    def send_raw(self, frame: bytes) -> bytes:
        self.sock.send(frame)
        return self.sock.recv()

    def call(self, kind, body=None, *, job_id=None, seq=None, credential=None) -> dict:
        if kind in protocol.JOB_KINDS:
            credential = credential or self.credentials.get(job_id)
            msg = protocol.request(kind, body, job_id=job_id, client_id=self.client_id, seq=seq, credential=credential)
        else:
            msg = protocol.request(kind, body, credential=credential)
        reply = protocol.loads(self.send_raw(protocol.dumps(msg)))
        issued = (reply.get("body") or {}).get("credential") if reply.get("type") == "hello_reply" else None
        if issued:
            self.credentials[job_id] = issued
        return reply

    def close(self):
        self.sock.close(0)
        self.ctx.term()




def run_cli(*args, timeout=20.0, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "autolrs.server", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)
