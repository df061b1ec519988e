"""The layout of :meth:`AutoLRS.state_dict() <autolrs.callbacks.callback.AutoLRS.state_dict>`:
what a restarted trainer needs to carry on with its tuning job, as plain data, and the checks a
saved dict passes before :meth:`~autolrs.callbacks.callback.AutoLRS.load_state_dict` changes
anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from autolrs.callbacks.options import check_job_id

__all__ = ["STATE_VERSION", "JobState"]

#: Version of the layout; later versions only add keys (2: the job's credential).
STATE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class JobState:
    """One callback's tuning job: its id, tuner and config, the param groups' LRs
    (:meth:`~autolrs.callbacks.lr.GroupLRs.state_dict`), the counters, whether the tuner had
    said stop, the job's credential (None until the server issued one), and the client id and
    next sequence number of the process that saved it (None off rank 0 under DDP)."""

    job: str
    tuner: str
    config: dict
    lrs: dict
    step: int = 0
    skipped_steps: int = 0
    reports: int = 0
    stopped: bool = False
    credential: str | None = None
    client_id: str | None = None
    seq: int | None = None

    def to_dict(self) -> dict:
        """The state dict (plain data, deep copies)."""
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def checked(cls, state: Mapping[str, Any], tuner: str, config: dict) -> "JobState":
        """The job of a saved state dict of any version up to :data:`STATE_VERSION` (keys of a
        later one are ignored); ValueError when it is not one, or is of another tuner or config."""
        version = state.get("version") if isinstance(state, Mapping) else None
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= STATE_VERSION:
            raise ValueError(f"not an AutoLRS state dict of a version in 1..{STATE_VERSION} (version {version!r})")
        job = check_job_id(state.get("job"))
        counts = [state.get(key, 0) for key in ("step", "skipped_steps", "reports")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValueError(f"step, skipped_steps and reports must be integers >= 0, got {counts}")
        if state.get("tuner") != tuner or state.get("config") != config:
            raise ValueError(
                f"the state is of job {job!r} with tuner {state.get('tuner')!r} and config "
                f"{state.get('config')!r}; this callback has tuner {tuner!r} and config "
                f"{config!r}: build it with the same ones"
            )
        credential = state.get("credential")
        if credential is not None and (not isinstance(credential, str) or not credential):
            raise ValueError(
                f"the state's credential must be a non-empty string or None, got {type(credential).__name__}"
            )
        step, skipped_steps, reports = counts
        return cls(
            job=job,
            tuner=tuner,
            config=config,
            lrs=state["lrs"],
            step=step,
            skipped_steps=skipped_steps,
            reports=reports,
            stopped=bool(state.get("stopped", False)),
            credential=credential,
            client_id=state.get("client_id"),
            seq=state.get("seq"),
        )
