"""Server configuration: embedded defaults < a YAML file (``--config``) < command-line overrides.

Every layer is checked against the schema of ``defaults.yaml``, so a misspelt key fails at
start-up with its path instead of being silently ignored. ``tuners:`` holds per-tuner default
knobs; each entry must name a registered tuner and only that tuner's own knobs.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from autolrs.errors import ConfigError, did_you_mean
from autolrs.tuners import JOB_KEYS, TUNERS
from autolrs.tuners.guard_knobs import DEFAULTS as GUARD_KNOBS

__all__ = ["ConfigError", "ServerConfig", "job_tuner_config", "load_config", "load_defaults"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    state_dir: str
    max_message_bytes: int
    fsync: bool
    #: tuner name -> default knobs for jobs using that tuner.
    tuners: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Many jobs and authentication (see defaults.yaml).
    workers: int = 16
    #: Tuner processes (server/tuner_host.py); 0: tuners run in the server process.
    processes: int = 0
    tuner_timeout_s: float = 60.0
    max_sessions: int = 1000
    lease_s: float = 3600.0
    secret_file: str | None = None
    auth_window_s: float = 120.0
    allow_insecure: bool = False
    curve_secret_key_file: str | None = None
    max_sessions_per_peer: int = 250
    max_backlog_bytes: int = 64 << 20
    #: None: ``<state_dir>/admin.token``.
    admin_token_file: str | None = None
    #: The dashboard (server/dashboard/): its address, and its port (None: not served).
    http_host: str = "127.0.0.1"
    http_port: int | None = None


def load_defaults() -> dict:
    """The embedded ``defaults.yaml`` as a dict (package data, so it works from a wheel too)."""
    text = resources.files("autolrs.server").joinpath("defaults.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (same nested shape).

    Raises ConfigError naming the offending key and where it came from.
    """
    defaults = load_defaults()
    merged = copy.deepcopy(defaults)
    if path is not None:
        merged = _merge(merged, _read_yaml(path), defaults, str(path))
    if overrides:
        merged = _merge(merged, overrides, defaults, "command line")
    return _build(merged)


def _read_yaml(path: str | Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:  # an empty file is an empty config
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(base: dict, layer: Mapping[str, Any], schema: Mapping[str, Any], source: str, prefix: str = "") -> dict:
    """Deep-merge ``layer`` over ``base``; keys must exist in ``schema`` (except under tuners)."""
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{source}: '{prefix or '<top>'}' must be a mapping")
    out = dict(base)
    for key, value in layer.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise ConfigError(
                f"{source}: unknown key '{where}'{did_you_mean(key, map(str, schema))}; "
                f"valid: {', '.join(sorted(map(str, schema)))}"
            )
        if key == "tuners" and not prefix:
            out[key] = _merge_tuners(out.get(key) or {}, value, source)
        elif isinstance(schema[key], dict):
            out[key] = _merge(out.get(key) or {}, value, schema[key], source, where)
        else:
            out[key] = value
    return out


def _merge_tuners(base: Mapping[str, Any], layer: Any, source: str) -> dict:
    if layer is None:
        return dict(base)
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{source}: 'tuners' must map tuner names to their default knobs")
    out = {name: dict(knobs) for name, knobs in base.items()}
    for name, knobs in layer.items():
        if name not in TUNERS:
            raise ConfigError(
                f"{source}: 'tuners.{name}' is not a registered tuner{did_you_mean(name, TUNERS)}; "
                f"registered: {', '.join(sorted(TUNERS))}"
            )
        knobs = {} if knobs is None else knobs
        if not isinstance(knobs, Mapping):
            raise ConfigError(f"{source}: 'tuners.{name}' must be a mapping of knobs")
        cls = TUNERS[name]
        for knob in knobs:
            if knob in JOB_KEYS:
                # These come from each job's hello (the optimizer, the client's budget).
                raise ConfigError(
                    f"{source}: 'tuners.{name}.{knob}' is set per job by the client, not in the server config"
                )
            if knob in GUARD_KNOBS:  # the divergence guard's knobs go with every tuner
                continue
            if knob not in cls.defaults and knob not in cls.aliases and knob not in cls.aliases.values():
                valid = sorted(map(cls.public_name, cls.defaults))
                raise ConfigError(
                    f"{source}: unknown knob 'tuners.{name}.{knob}'{did_you_mean(knob, valid)}; "
                    f"valid: {', '.join(valid) or '(none)'}"
                )
        try:
            knobs, notes = cls.canonical_config(knobs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: 'tuners.{name}': {exc}") from None
        for note in notes:
            log.warning("%s: %s", source, note)
        out.setdefault(name, {}).update(knobs)
    return out


def _build(merged: Mapping[str, Any]) -> ServerConfig:
    s = merged["server"]
    host = s["host"]
    if not isinstance(host, str) or not host:
        raise ConfigError(f"server.host must be a non-empty string, got {host!r}")
    port = _int(s["port"], "server.port", 0, 65535)
    state_dir = s["state_dir"]
    if not isinstance(state_dir, (str, Path)) or not str(state_dir):
        raise ConfigError(f"server.state_dir must be a path, got {state_dir!r}")
    max_bytes = _int(s["max_message_bytes"], "server.max_message_bytes", 1024, 1 << 30)
    fsync = s["fsync"]
    if not isinstance(fsync, bool):
        raise ConfigError(f"server.fsync must be true or false, got {fsync!r}")
    secret_file = s["secret_file"]
    if secret_file is not None and (not isinstance(secret_file, (str, Path)) or not str(secret_file)):
        raise ConfigError(f"server.secret_file must be a path or null, got {secret_file!r}")
    curve_file = s["curve_secret_key_file"]
    if curve_file is not None and (not isinstance(curve_file, (str, Path)) or not str(curve_file)):
        raise ConfigError(f"server.curve_secret_key_file must be a path or null, got {curve_file!r}")
    admin_file = s["admin_token_file"]
    if admin_file is not None and (not isinstance(admin_file, (str, Path)) or not str(admin_file)):
        raise ConfigError(f"server.admin_token_file must be a path or null, got {admin_file!r}")
    http_host = s["http_host"]
    if not isinstance(http_host, str) or not http_host:
        raise ConfigError(f"server.http_host must be a non-empty string, got {http_host!r}")
    http_port = None if s["http_port"] is None else _int(s["http_port"], "server.http_port", 0, 65535)
    allow_insecure = s["allow_insecure"]
    if not isinstance(allow_insecure, bool):
        raise ConfigError(f"server.allow_insecure must be true or false, got {allow_insecure!r}")
    return ServerConfig(
        host=host,
        port=port,
        state_dir=str(state_dir),
        max_message_bytes=max_bytes,
        fsync=fsync,
        tuners=copy.deepcopy(dict(merged.get("tuners") or {})),
        workers=_int(s["workers"], "server.workers", 1, 256),
        processes=_processes(s["processes"]),
        tuner_timeout_s=_seconds(s["tuner_timeout_s"], "server.tuner_timeout_s"),
        max_sessions=_int(s["max_sessions"], "server.max_sessions", 1, 1_000_000),
        lease_s=_seconds(s["lease_s"], "server.lease_s"),
        secret_file=None if secret_file is None else str(secret_file),
        auth_window_s=_seconds(s["auth_window_s"], "server.auth_window_s"),
        allow_insecure=allow_insecure,
        curve_secret_key_file=None if curve_file is None else str(curve_file),
        max_sessions_per_peer=_int(s["max_sessions_per_peer"], "server.max_sessions_per_peer", 1, 1_000_000),
        max_backlog_bytes=_int(s["max_backlog_bytes"], "server.max_backlog_bytes", 1 << 20, 1 << 40),
        admin_token_file=None if admin_file is None else str(admin_file),
        http_host=http_host,
        http_port=http_port,
    )


def _processes(value: Any) -> int:
    """``server.processes``: ``auto`` is one per core this process may run on."""
    if value == "auto":
        return available_cores()
    try:
        return _int(value, "server.processes", 0, 1024)
    except ConfigError:
        raise ConfigError(f"server.processes must be auto or an integer in [0, 1024], got {value!r}") from None


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, str):  # from a command line or a quoted YAML value
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():  # from a command line or a quoted YAML value
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def job_tuner_config(
    config: ServerConfig, tuner: str, hello_config: Mapping[str, Any] | None, job: Mapping[str, Any]
) -> dict:
    """The config a job's tuner is built with: server defaults < hello config < job keys.

    Job keys (``JOB_KEYS``: initial_lr, max_steps, has_val_fn) come from the hello body; a key
    the client sent as null means "unknown" and does not erase a value set by a lower layer. A
    renamed knob counts as the same knob under either name (:meth:`Tuner.canonical_config`).
    """
    merged: dict = dict(config.tuners.get(tuner, {}))
    hello_config = dict(hello_config or {})
    if tuner in TUNERS:
        hello_config = TUNERS[tuner].canonical_config(hello_config)[0]
    merged.update(hello_config)
    for key in JOB_KEYS:
        if job.get(key) is not None:
            merged[key] = job[key]
    return merged
