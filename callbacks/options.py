"""The callback's settings, checked before anything is built: what the job asks of the server
(:class:`JobOptions`), how to reach it (:class:`LinkOptions`) and where checkpoints go
(:func:`checkpoint_storage`). Stdlib only."""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from autolrs.callbacks.embedded import AUTO, ENV_SERVER, resolve_endpoint
from autolrs.wire import protocol

__all__ = ["JobOptions", "LinkOptions", "check_job_id", "checkpoint_storage", "default_job_id"]


def default_job_id() -> str:
    """``<hostname>-<pid>-<6 hex>``, made to satisfy the protocol's job id rule."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    job = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).lstrip("._-")[-128:].lstrip("._-")
    return job if protocol.is_valid_job_id(job) else f"job-{uuid.uuid4().hex[:12]}"


def check_job_id(job: Any) -> str:
    if not protocol.is_valid_job_id(job):
        raise ValueError(
            f"invalid job id {job!r}: 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return job


def checkpoint_storage(checkpoint: str | None, checkpoint_dir: Any) -> str | None:
    """The storage of the checkpoints: ``checkpoint`` if given (the store checks it), else
    ``"disk"`` when a folder is given and ``"memory"`` without one."""
    if checkpoint is None:
        return "memory" if checkpoint_dir is None else "disk"
    if checkpoint in ("memory", "cpu") and checkpoint_dir is not None:
        raise ValueError(
            "checkpoint_dir is where disk checkpoints go: pass checkpoint='disk' (or leave checkpoint "
            "unset) with it, or drop it"
        )
    return checkpoint


def _optional_int(value: Any, name: str, lo: int, hi: int | None = None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value >= hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise ValueError(f"{name} must be an integer {bound} or None, got {value!r}")
    return value


def _positive(value: Any, name: str) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class JobOptions:
    """The tuner, its knobs and the job's identity and budget, as the hello sends them."""

    tuner: str
    config: dict
    job: str
    max_steps: int | None
    seed: int | None

    @classmethod
    def checked(cls, tuner: Any, config: Any, job: Any, max_steps: Any, seed: Any) -> "JobOptions":
        if not isinstance(tuner, str) or not tuner:
            raise ValueError(f"tuner must be a non-empty string, got {tuner!r}")
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"config must be a dict or None, got {type(config).__name__}")
        job = check_job_id(default_job_id() if job is None else job)
        return cls(
            tuner=tuner,
            config=dict(config or {}),
            job=job,
            max_steps=_optional_int(max_steps, "max_steps", 1),
            seed=_optional_int(seed, "seed", 0, 2**63),
        )


@dataclass(frozen=True)
class LinkOptions:
    """Where the server is (``"auto"`` is ``$AUTOLRS_SERVER`` when set, else it stays ``"auto"``:
    an embedded server), how long a call may wait for it, how often to retry, the secret, and
    whether training may go on without it (``require_server=False``: fail open)."""

    server: str
    timeout: float
    retry_interval: float
    secret: str | bytes | None
    require_server: bool = False

    @classmethod
    def checked(
        cls, server: Any, timeout: Any, retry_interval: Any, secret: Any, require_server: Any = False
    ) -> "LinkOptions":
        if server != AUTO:
            protocol.check_endpoint(server)
        elif (endpoint := resolve_endpoint(server)) is not None:
            try:
                server = protocol.check_endpoint(endpoint)
            except ValueError as exc:
                raise ValueError(f"${ENV_SERVER}: {exc}") from None
        if not isinstance(require_server, bool):
            raise ValueError(f"require_server must be True or False, got {require_server!r}")
        return cls(
            server=server,
            timeout=_positive(timeout, "timeout"),
            retry_interval=_positive(retry_interval, "retry_interval"),
            secret=secret,
            require_server=require_server,
        )
