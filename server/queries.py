"""``autolrs-server status`` and ``autolrs-server ping``: one request to a running server, its
answer printed (a table, or the raw JSON with ``--json``). :func:`request` is also what tests
and benchmarks use to ask a server for its status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import zmq

from autolrs.wire import auth, messages, protocol

__all__ = ["PROG", "format_status", "query", "request"]

#: The command (:mod:`autolrs.server.cli` builds its parser).
PROG = "autolrs-server"


def request(
    endpoint: str,
    kind: str,
    timeout: float,
    secret: bytes | None = None,
    server_key: bytes | None = None,
    credential: str | None = None,
) -> dict:
    """One request over a fresh REQ socket (signed with ``secret``, CURVE-encrypted to
    ``server_key`` if given, carrying ``credential``: the admin token for ``status``); raises
    TimeoutError, never blocks past ``timeout``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        sock.curve_serverkey = server_key
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    try:
        sock.connect(endpoint)
        body = messages.REQUESTS[kind]().to_body()
        payload = protocol.dumps(
            protocol.request(kind, body, client_id=f"cli-{uuid.uuid4().hex[:12]}", credential=credential)
        )
        sock.send_multipart([payload] if secret is None else [payload, auth.sign(secret, payload)])
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no answer from {endpoint} within {timeout:g} s (is the server running?)")
        return protocol.loads(sock.recv())
    finally:
        sock.close(0)
        ctx.term()


def query(args: argparse.Namespace) -> int:
    kind = args.command
    admin = None
    try:
        protocol.check_endpoint(args.server)
    except ValueError as exc:
        print(f"{PROG} {kind}: {exc}", file=sys.stderr)
        return 2
    try:
        secret = auth.resolve_secret(None, args.secret_file)
        server_key = auth.resolve_server_key(args.server_key)
        if getattr(args, "admin_token_file", None):
            admin = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
    except auth.SecretError as exc:
        print(f"{PROG} {kind}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG} {kind}: cannot read the admin token file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        reply = request(args.server, kind, args.timeout, secret, server_key, admin)
    except TimeoutError as exc:
        print(f"{PROG} {kind}: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"{PROG} {kind}: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    except protocol.ProtocolError as exc:
        print(f"{PROG} {kind}: unreadable answer from {args.server}: {exc.message}", file=sys.stderr)
        return 1
    elapsed_ms = (time.monotonic() - started) * 1000
    if args.json:
        # Raw JSON, non-finite floats kept in the protocol's tagged form.
        print(json.dumps(json.loads(protocol.dumps(reply)), indent=2))
    if not isinstance(reply, dict) or reply.get("status") != "ok":
        err = reply.get("error", {}) if isinstance(reply, dict) else {}
        print(f"{PROG} {kind}: server replied with error {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    if not args.json:
        try:
            body = messages.REPLIES[kind].from_body(reply.get("body", {}))
        except messages.BodyError as exc:
            print(f"{PROG} {kind}: unreadable answer from {args.server}: {exc}", file=sys.stderr)
            return 1
        if kind == "ping":
            print(f"{args.server}: autolrs {body.version} protocol {body.protocol} ({elapsed_ms:.1f} ms)")
        else:
            print(format_status(body.to_body()))
    return 0


def format_status(body: dict) -> str:
    """A readable table of a status reply's sessions."""
    server = body.get("server", {})
    lines = [
        f"autolrs {server.get('version')} protocol {server.get('protocol')}, "
        f"up {_duration(server.get('uptime_s'))}, {server.get('sessions', 0)} job(s)"
    ]
    if server.get("admin", True):
        rows: list[tuple[str, ...]] = [("JOB", "TUNER", "STATUS", "STEP", "LR", "REQUESTS", "UPDATED")]
        for s in body.get("sessions", []):
            rows.append(
                (
                    str(s.get("job_id")),
                    str(s.get("tuner")),
                    str(s.get("status")),
                    str(s.get("step")),
                    _lr(s.get("lr")),
                    str(s.get("requests")),
                    _when(s.get("updated")),
                )
            )
    else:
        lines.append("(each job's id and status; --admin-token-file shows tuners, steps, LRs and summaries)")
        rows = [("JOB", "STATUS")]
        rows += [(str(s.get("job_id")), str(s.get("status"))) for s in body.get("sessions", [])]
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _lr(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _when(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
