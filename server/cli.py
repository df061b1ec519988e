"""``autolrs-server`` / ``python -m autolrs.server``: serve, status, ping, keygen, tuners.

The only module that configures logging and installs signal handlers, so the rest of the
package stays importable (and testable) inside other programs without side effects.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import zmq

import autolrs
from autolrs.wire import auth, protocol

from autolrs.errors import ConfigError
from autolrs.server.config import load_config
from autolrs.server.process import DASHBOARD_PREFIX
from autolrs.server.queries import PROG, query, request
from autolrs.server.security import admin_token_path
from autolrs.server.sessions import StateDirLocked

__all__ = ["COMMANDS", "PROG", "build_parser", "main", "request"]  # request: tests and benchmarks import it here

COMMANDS = ("serve", "status", "ping", "keygen", "tuners", "dashboard", "dashboard-token")
DEFAULT_SERVER = "tcp://127.0.0.1:5555"

log = logging.getLogger("autolrs.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="The autolrs learning-rate tuning server.")
    p.add_argument(
        "--version", action="version", version=f"%(prog)s {autolrs.__version__} (protocol {protocol.PROTOCOL_VERSION})"
    )
    sub = p.add_subparsers(dest="command", metavar="{serve,status,ping,keygen,tuners,dashboard,dashboard-token}")

    serve = sub.add_parser("serve", help="run the server (the default command)")
    serve.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default from config: 5555)")
    serve.add_argument("--config", help="YAML file merged over the built-in defaults")
    serve.add_argument("--state-dir", help="where job state and decision logs are kept")
    serve.add_argument(
        "--secret-file",
        help="file holding the shared secret that requests must be signed with "
        "(default: $AUTOLRS_SECRET, else the file named by $AUTOLRS_SECRET_FILE, else none)",
    )
    serve.add_argument(
        "--curve-secret-key-file",
        help="encrypt with ZeroMQ CURVE using this server key "
        "(the .key_secret file of `keygen`); clients need the public key",
    )
    serve.add_argument(
        "--insecure", action="store_true", help="allow binding a non-loopback --host without a secret (logs a warning)"
    )
    serve.add_argument(
        "--background-tuner-import",
        action="store_true",
        help="import the tuners' modules after the ready line, in a background thread, and start "
        "each tuner process at its first job (a start in a fraction of a second; a job's first "
        "hello may wait for its tuner's import)",
    )
    serve.add_argument(
        "--stop-on-stdin-close",
        action="store_true",
        help="stop when standard input closes (a launcher's lifeline: the server ends with the "
        "process that started it)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        help="serve the dashboard on this port (0 picks a free one; default from config: no dashboard)",
    )
    serve.add_argument("--http-host", help="the dashboard's address (default from config: 127.0.0.1)")
    serve.add_argument(
        "--processes",
        help="tuner processes, jobs pinned to one by their id: auto (one per core) "
        "or a number; 0 runs the tuners in the server process (default from config: auto)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="stderr log level (default INFO)",
    )

    for name, text in (("status", "list the jobs of a running server"), ("ping", "check a server answers")):
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "--server",
            default=os.environ.get("AUTOLRS_SERVER") or DEFAULT_SERVER,
            help=f"server endpoint (default: $AUTOLRS_SERVER, else {DEFAULT_SERVER})",
        )
        c.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
        c.add_argument("--json", action="store_true", help="print the raw reply as JSON")
        c.add_argument(
            "--secret-file",
            help="sign the request with this file's secret (default: $AUTOLRS_SECRET / $AUTOLRS_SECRET_FILE)",
        )
        c.add_argument(
            "--server-key", help="the server's CURVE public key or its server.key file (default: $AUTOLRS_SERVER_KEY)"
        )
        if name == "status":
            c.add_argument(
                "--admin-token-file",
                help="the server's admin token (written at its start to "
                "<state_dir>/admin.token): shows every job's tuner, step, LR and summary; without "
                "it, each job's id and status",
            )
    keygen = sub.add_parser("keygen", help="write a CURVE key pair (server.key, server.key_secret) into DIR")
    keygen.add_argument("dir", help="folder for the key files (created if missing)")
    tuners = sub.add_parser("tuners", help="list the tuners and their knobs (defaults and meaning)")
    tuners.add_argument("name", nargs="*", help="only these tuners (default: all)")
    tuners.add_argument("--json", action="store_true", help="print them as JSON")

    dash = sub.add_parser("dashboard", help="browse a state folder's jobs in a browser, no server running")
    dash.add_argument("--state-dir", required=True, help="the state folder of a server (finished or running)")
    dash.add_argument("--http-port", type=int, default=0, help="port (default 0: a free one)")
    dash.add_argument("--http-host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dash.add_argument(
        "--secret-file",
        help="require the dashboard token of this secret "
        "(default: $AUTOLRS_SECRET / $AUTOLRS_SECRET_FILE, else no token)",
    )
    dash.add_argument("--insecure", action="store_true", help="allow a non-loopback --http-host without a secret")
    dash.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="stderr log level (default INFO)",
    )
    token = sub.add_parser("dashboard-token", help="print the dashboard token of a secret")
    token.add_argument("--secret-file", help="the secret's file (default: $AUTOLRS_SECRET / $AUTOLRS_SECRET_FILE)")
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
    if args.command == "tuners":
        from autolrs.server.knobs import list_tuners

        return list_tuners(args.name, as_json=args.json)
    if args.command == "dashboard":
        return browse(args)
    if args.command == "dashboard-token":
        return print_token(args)
    return query(args)


# --- serve -----------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, Any] = {
        "server": {
            k: v
            for k, v in (
                ("host", args.host),
                ("port", args.port),
                ("state_dir", args.state_dir),
                ("secret_file", args.secret_file),
                ("curve_secret_key_file", args.curve_secret_key_file),
                ("http_host", args.http_host),
                ("http_port", args.http_port),
                ("processes", args.processes),
            )
            if v is not None
        }
    }
    if args.insecure:
        overrides["server"]["allow_insecure"] = True
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2

    from autolrs.server.transport import answering_threads, make_server  # after config errors are reported

    try:
        # A quick start (the embedded server's) starts each tuner process at its first job.
        server = make_server(config, start_tuner_processes=not args.background_tuner_import)
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

    try:
        dashboard = _live_dashboard(config, server)
    except (ConfigError, OSError) as exc:
        print(f"{PROG}: cannot serve the dashboard on {config.http_host}:{config.http_port}: {exc}", file=sys.stderr)
        server.close()
        return 2 if isinstance(exc, ConfigError) else 1

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        server.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if args.stop_on_stdin_close:
        threading.Thread(target=_stop_at_stdin_eof, args=(server,), name="autolrs-lifeline", daemon=True).start()
    try:
        if not args.background_tuner_import:
            _import_tuners()  # before the ready line: no job's first hello waits for an import
        # The one line a launcher waits for (run.sh parses it): flushed at once.
        print(f"{PROG} listening on {server.endpoint} state_dir={server.dispatcher.store.state_dir}", flush=True)
        if dashboard is not None:
            print(f"{DASHBOARD_PREFIX}{dashboard.open_url}", flush=True)
        if args.background_tuner_import:
            threading.Thread(target=_import_tuners, name="autolrs-tuner-import", daemon=True).start()
        log.info(
            "serving %d job(s) from %s with %d worker thread(s) and %d tuner process(es)%s; requests %s",
            len(server.dispatcher.store),
            server.dispatcher.store.state_dir,
            answering_threads(config),
            config.processes,
            " started at their first job" if args.background_tuner_import else "",
            "must be signed" if server.verifier is not None else "are not authenticated",
        )
        log.info("the admin token (status shows every job in full with it) is in %s", admin_token_path(config))
        if server.public_key is not None:
            log.info("CURVE encryption on; clients need the server's public key %s", server.public_key.decode())
        server.serve_forever()
    finally:
        if dashboard is not None:
            dashboard.close()
        server.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    # Nothing to flush: every change was saved before its reply left.
    log.info("stopped")
    return 0


def _import_tuners() -> None:
    """Import every tuner's module (the registry would import each on its first job; the
    ``autolrs`` tuner's brings scikit-learn and scipy, seconds on a busy machine)."""
    from autolrs.tuners import TUNERS

    for name in list(TUNERS):
        try:
            TUNERS[name]
        except Exception:  # noqa: BLE001 - the job that names it will get the error
            log.exception("cannot import tuner %s", name)


def _stop_at_stdin_eof(server: Any) -> None:
    """Block until standard input closes (the launching process ended or let go), then stop.
    Reads the file descriptor itself: a thread blocked in ``sys.stdin``'s buffered reader would
    hold its lock and abort the interpreter's shutdown."""
    try:
        fd = sys.stdin.fileno()
        while os.read(fd, 4096):
            pass
    except (AttributeError, OSError, ValueError):  # no stdin at all: nothing to wait for
        return
    log.info("standard input closed; stopping")
    server.stop()


# --- dashboard ---------------------------------------------------------------------------


def _live_dashboard(config, server):
    """The dashboard of the server being started (None without ``http_port``), serving."""
    if config.http_port is None:
        return None
    from autolrs.server.dashboard import DashboardServer, LiveSource, dashboard_token
    from autolrs.server.security import check_bind, server_secret

    key = server_secret(config)
    check_bind(config, key, config.http_host, exposes="read every job's data on the dashboard")
    token = None if key is None else dashboard_token(key)
    return DashboardServer(LiveSource(server.dispatcher), config.http_host, config.http_port, token).start()


def browse(args: argparse.Namespace) -> int:
    """``autolrs-server dashboard --state-dir DIR``: the dashboard over a state folder, until a signal."""
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from autolrs.server.dashboard import DashboardServer, StateDirSource, dashboard_token
    from autolrs.server.security import check_bind

    overrides = {
        "server": {"http_host": args.http_host, "http_port": args.http_port, "allow_insecure": bool(args.insecure)}
    }
    try:
        config = load_config(None, overrides)
        key = auth.resolve_secret(None, args.secret_file)
        check_bind(config, key, config.http_host, exposes="read every job's data on the dashboard")
        source = StateDirSource(args.state_dir)
    except (ConfigError, auth.SecretError, FileNotFoundError) as exc:
        print(f"{PROG} dashboard: {exc}", file=sys.stderr)
        return 2
    try:
        dashboard = DashboardServer(
            source, config.http_host, config.http_port, None if key is None else dashboard_token(key)
        ).start()
    except OSError as exc:
        print(f"{PROG} dashboard: cannot bind {config.http_host}:{config.http_port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"{DASHBOARD_PREFIX}{dashboard.open_url}", flush=True)
        log.info("browsing %s (read-only, no server)", source.state_dir)
        while not stop.wait(0.5):
            pass
    finally:
        dashboard.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def print_token(args: argparse.Namespace) -> int:
    from autolrs.server.dashboard import dashboard_token

    try:
        key = auth.resolve_secret(None, args.secret_file)
    except auth.SecretError as exc:
        print(f"{PROG} dashboard-token: {exc}", file=sys.stderr)
        return 2
    if key is None:
        print(
            f"{PROG} dashboard-token: no secret (--secret-file, $AUTOLRS_SECRET or $AUTOLRS_SECRET_FILE): "
            "a dashboard without one needs no token",
            file=sys.stderr,
        )
        return 2
    print(dashboard_token(key))
    return 0


# --- keygen ------------------------------------------------------------------------------


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


if __name__ == "__main__":
    sys.exit(main())
