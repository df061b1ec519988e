"""``autolrs-server`` / ``python -m autolrs.server``: serve, status, ping.

The only module that configures logging and installs signal handlers, so the rest of the
package stays importable (and testable) inside other programs without side effects.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import zmq

import autolrs
from autolrs.wire import auth, messages, protocol

from autolrs.errors import ConfigError
from autolrs.server.config import load_config
from autolrs.server.security import admin_token_path
from autolrs.server.sessions import StateDirLocked

PROG = "autolrs-server"
COMMANDS = ("serve", "status", "ping", "keygen")
DEFAULT_SERVER = "tcp://127.0.0.1:5555"

log = logging.getLogger("autolrs.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="The autolrs learning-rate tuning server.")
    p.add_argument("--version", action="version", version=f"%(prog)s {autolrs.__version__} "
                   f"(protocol {protocol.PROTOCOL_VERSION})")
    sub = p.add_subparsers(dest="command", metavar="{serve,status,ping,keygen}")

    serve = sub.add_parser("serve", help="run the server (the default command)")
    serve.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default from config: 5555)")
    serve.add_argument("--config", help="YAML file merged over the built-in defaults")
    serve.add_argument("--state-dir", help="where job state and decision logs are kept")
    serve.add_argument("--secret-file", help="file holding the shared secret that requests must be signed with "
                       "(default: $AUTOLRS_SECRET, else the file named by $AUTOLRS_SECRET_FILE, else none)")
    serve.add_argument("--curve-secret-key-file", help="encrypt with ZeroMQ CURVE using this server key "
                       "(the .key_secret file of `keygen`); clients need the public key")
    serve.add_argument("--insecure", action="store_true",
                       help="allow binding a non-loopback --host without a secret (logs a warning)")
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level (default INFO)")

    for name, text in (("status", "list the jobs of a running server"), ("ping", "check a server answers")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--server", default=DEFAULT_SERVER, help=f"server endpoint (default {DEFAULT_SERVER})")
        c.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
        c.add_argument("--json", action="store_true", help="print the raw reply as JSON")
        c.add_argument("--secret-file", help="sign the request with this file's secret "
                       "(default: $AUTOLRS_SECRET / $AUTOLRS_SECRET_FILE)")
        c.add_argument("--server-key", help="the server's CURVE public key or its server.key file "
                       "(default: $AUTOLRS_SERVER_KEY)")
        if name == "status":
            c.add_argument("--admin-token-file", help="the server's admin token (written at its start to "
                           "<state_dir>/admin.token): shows every job's tuner, step, LR and summary; without "
                           "it, each job's id and status")
    keygen = sub.add_parser("keygen", help="write a CURVE key pair (server.key, server.key_secret) into DIR")
    keygen.add_argument("dir", help="folder for the key files (created if missing)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `serve` is the default: `autolrs-server --port 0` means `autolrs-server serve --port 0`.
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "keygen":
        return keygen(args)
    return query(args)


# --- serve -----------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {"server": {k: v for k, v in (("host", args.host), ("port", args.port),
                                                              ("state_dir", args.state_dir),
                                                              ("secret_file", args.secret_file),
                                                              ("curve_secret_key_file", args.curve_secret_key_file))
                                     if v is not None}}
    if args.insecure:
        overrides["server"]["allow_insecure"] = True
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2

    from autolrs.server.transport import make_server  # after config errors are reported

    try:
        server = make_server(config)
    except ConfigError as exc:  # the secret, or a non-loopback address without one
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    except StateDirLocked as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"{PROG}: cannot bind tcp://{config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: cannot use state dir {config.state_dir}: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        server.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # The one line a launcher waits for (run.sh parses it): flushed at once.
        print(f"{PROG} listening on {server.endpoint} state_dir={server.dispatcher.store.state_dir}", flush=True)
        log.info("serving %d job(s) from %s with %d worker(s); requests %s", len(server.dispatcher.store),
                 server.dispatcher.store.state_dir, config.workers,
                 "must be signed" if server.verifier is not None else "are not authenticated")
        log.info("the admin token (status shows every job in full with it) is in %s",
                 admin_token_path(config))
        if server.public_key is not None:
            log.info("CURVE encryption on; clients need the server's public key %s", server.public_key.decode())
        server.serve_forever()
    finally:
        server.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    # Nothing to flush: every change was saved before its reply left.
    log.info("stopped")
    return 0


# --- status / ping -----------------------------------------------------------------------


def keygen(args: argparse.Namespace) -> int:
    import zmq.auth

    directory = Path(args.dir)
    if (directory / "server.key_secret").exists():
        print(f"{PROG} keygen: {directory / 'server.key_secret'} exists; not overwriting it", file=sys.stderr)
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(directory), "server")
    os.chmod(secret_file, 0o600)
    public, _ = zmq.auth.load_certificate(public_file)
    print(f"server: --curve-secret-key-file {secret_file}")
    print(f"clients: AUTOLRS_SERVER_KEY={public_file}  (or the key itself: {public.decode()})")
    return 0


def request(endpoint: str, kind: str, timeout: float, secret: bytes | None = None,
            server_key: bytes | None = None, credential: str | None = None) -> dict:
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
        payload = protocol.dumps(protocol.request(kind, body, client_id=f"cli-{uuid.uuid4().hex[:12]}",
                                                  credential=credential))
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
    lines = [f"autolrs {server.get('version')} protocol {server.get('protocol')}, "
             f"up {_duration(server.get('uptime_s'))}, {server.get('sessions', 0)} job(s)"]
    if server.get("admin", True):
        rows = [("JOB", "TUNER", "STATUS", "STEP", "LR", "REQUESTS", "UPDATED")]
        for s in body.get("sessions", []):
            rows.append((str(s.get("job_id")), str(s.get("tuner")), str(s.get("status")), str(s.get("step")),
                         _lr(s.get("lr")), str(s.get("requests")), _when(s.get("updated"))))
    else:
        lines.append("(each job's id and status; --admin-token-file shows tuners, steps, LRs and summaries)")
        rows = [("JOB", "STATUS")] + [(str(s.get("job_id")), str(s.get("status"))) for s in body.get("sessions", [])]
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


if __name__ == "__main__":
    sys.exit(main())
