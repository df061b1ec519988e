"""``AutoLRS``: the object a training loop calls after every ``optimizer.step()``.

It carries out the server's plans (see :mod:`autolrs.actions`): set the LR, checkpoint,
restore, discard, evaluate, run a segment of steps and report its losses, stop. Between
reports it does almost nothing: ``step()`` counts the step and keeps ``loss.detach()`` (no
``.item()``, so no device sync per step); the losses of a segment are turned into floats once,
when the segment is reported.

It fails open. When the server does not answer, training goes on at the current LR with one
:class:`ServerUnavailableWarning`; the unanswered request stays pending and later steps look for
its reply without blocking (``poll_reply(0)``), resending it every ``retry_interval`` s. When
the reply comes, its plan is carried out; a plan's ``start_step`` tells a client that fell
behind how many of the segment's steps it already missed.

Every exchange with the server goes through :meth:`AutoLRS._server`. Under
``torch.distributed`` it runs on rank 0 only and its (plain-data) outcome is broadcast, so every
rank carries out the same plans (see :mod:`autolrs.callbacks.distributed`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time
import uuid
import warnings
from collections import deque
from typing import Any, Callable

import torch

from autolrs import actions
from autolrs.wire import protocol
from autolrs.callbacks import hypergrad
from autolrs.callbacks.client import Client
from autolrs.callbacks.distributed import distributed_link
from autolrs.callbacks.errors import (
    AutoLRSConfigError,
    AutoLRSWarning,
    ServerError,
    ServerUnavailable,
    ServerUnavailableWarning,
)
from autolrs.callbacks.probe import run_probes
from autolrs.callbacks.state import CheckpointStore, lr_value, set_group_lr
from autolrs.wire.protocol import ErrorCode

log = logging.getLogger(__name__)

__all__ = ["AutoLRS", "default_job_id"]

#: Hello rejections that mean the user asked for something impossible: raised at construction.
CONFIG_ERRORS = (ErrorCode.UNKNOWN_TUNER, ErrorCode.BAD_CONFIG, ErrorCode.JOB_CONFLICT, ErrorCode.UNAUTHENTICATED)

# Link states (what the callback is doing with the server).
_ONLINE = "online"  # nothing pending: a segment runs, or nothing is needed yet
_WAITING = "waiting"  # a request is pending; later steps poll for its reply and resend it
_DEFERRED = "deferred"  # a request failed on the server's side; it is sent again after retry_interval
_STOPPED = "stopped"  # the tuner said stop: only goodbye is left
_DETACHED = "detached"  # the server cannot help this job any more: train on, send only goodbye
_CLOSED = "closed"


def default_job_id() -> str:
    """``<hostname>-<pid>-<6 hex>``, made to satisfy the protocol's job id rule."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    job = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).lstrip("._-")[-128:].lstrip("._-")
    return job if protocol.is_valid_job_id(job) else f"job-{uuid.uuid4().hex[:12]}"


class AutoLRS:
    """Learning-rate tuning by an autolrs server, one line after ``optimizer.step()``::

        with AutoLRS(model, optimizer, tuner="autolrs", server="tcp://host:5555") as cb:
            for x, y in loader:
                ...
                optimizer.step()
                cb.step(loss)
                if cb.should_stop:
                    break

    ``val_fn()`` (optional) returns a validation loss (a float or a 0-d tensor); it is called
    when a plan says ``evaluate`` or a segment has ``eval_every``, and is responsible for
    ``model.eval()``/``torch.no_grad()`` and back. ``scaler`` (a GradScaler) and, with
    ``include_rng``, the torch/CUDA/numpy/python RNG states are part of every checkpoint.
    ``checkpoint="disk"`` keeps checkpoints in a temporary directory under ``checkpoint_dir``
    instead of memory.

    ``probe_fn()`` (optional; the ``loss_diff`` tuner needs it) returns the loss of the current
    batch as a tensor with its graph, e.g. ``lambda: criterion(model(x), y)`` over the loop's
    ``x, y``. A ``probe`` action calls it from a restored checkpoint for the loss and gradient
    before a step, then once per LR under ``no_grad`` after one optimizer step from that
    checkpoint (see :mod:`autolrs.callbacks.probe`); model and optimizer end as the checkpoint.

    With a ``scaler``, a step the GradScaler skipped (inf/NaN gradients: ``scaler.step`` did not
    call ``optimizer.step()``) is not a step: ``step()`` ignores it (no LR change, no loss
    recorded, ``global_step`` unchanged) and counts it in ``skipped_steps``. It is detected with
    an optimizer step post-hook, so it costs no device sync (GradScaler already synced to decide).
    Optimizers that skip inside ``step()`` themselves (``_step_supports_amp_scaling``, e.g.
    ``fused=True``) call the hook either way, so their skipped steps count as steps. No call blocks longer than ``timeout`` s waiting for the server (plus
    the time of ``val_fn`` and checkpoints).

    Under ``torch.distributed`` (DDP; ``distributed=None`` detects an initialised default
    process group of 2+ ranks, ``False`` makes each process its own job, ``True`` requires a
    group), build the callback and call ``step`` on every rank alike: rank 0 talks to the
    server under its job id, every rank carries out the same plans, and the reported losses
    and ``val_fn`` results are the means over the ranks.

    ``secret`` signs every request for a server that requires a shared secret (default: from
    ``$AUTOLRS_SECRET`` or the file named by ``$AUTOLRS_SECRET_FILE``, else unsigned); a server
    that refuses the signature at start raises :class:`AutoLRSConfigError`.
    """

    #: The most losses one report carries (the last ones of a segment): bounds memory and the
    #: size of a report (10,000 floats are ~200 kB of JSON).
    MAX_LOSSES = 10_000
    #: Upper bound of the wait for the goodbye reply at close().
    GOODBYE_TIMEOUT = 1.0

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tuner: str = "constant",
                 config: dict | None = None, server: str = "tcp://127.0.0.1:5555", job: str | None = None,
                 val_fn: Callable[[], Any] | None = None, *, scaler: Any = None, include_rng: bool = False,
                 probe_fn: Callable[[], Any] | None = None,
                 val_batches: Any = None, val_criterion: Callable[..., Any] | None = None,
                 checkpoint: str = "memory", checkpoint_dir: str | os.PathLike | None = None,
                 timeout: float = 5.0, retry_interval: float = 5.0, max_steps: int | None = None,
                 seed: int | None = None, distributed: bool | None = None, secret: str | bytes | None = None):
        if not isinstance(tuner, str) or not tuner:
            raise ValueError(f"tuner must be a non-empty string, got {tuner!r}")
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"config must be a dict or None, got {type(config).__name__}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if not (isinstance(retry_interval, (int, float)) and retry_interval > 0):
            raise ValueError(f"retry_interval must be > 0, got {retry_interval!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63) or None, got {seed!r}")
        job = default_job_id() if job is None else job
        if not protocol.is_valid_job_id(job):
            raise ValueError(f"invalid job id {job!r}: 1-128 characters of letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        if not optimizer.param_groups:
            raise ValueError("the optimizer has no param groups")
        # DDP: rank 0 talks to the server for all ranks, under its job id.
        self._dist = distributed_link(distributed)
        if self._dist is not None:
            job = self._dist.broadcast_value(job)

        self.model = model
        self.optimizer = optimizer
        self.val_fn = val_fn
        self.probe_fn = probe_fn
        self._probes: list[list[float]] = []  # [loss_before, loss_after] per probed LR, for the next report
        # Hypergradient tuners (rtho, marthe): where the validation gradient comes from.
        self._hypergrad, self._hypergrad_args = None, (val_batches, val_criterion, scaler)
        self.tuner = tuner
        self.config = dict(config or {})
        self.server = server
        self.job = job
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self.max_steps = max_steps
        self.seed = seed

        # LR: each group keeps its ratio to group 0's initial LR.
        lr0 = lr_value(optimizer.param_groups[0]["lr"])
        self._ratios = [1.0 if lr0 == 0 else lr_value(g["lr"]) / lr0 for g in optimizer.param_groups]
        # Setting the initial LR back gives every group its initial LR exactly (lr0 * (g / lr0)
        # can be off by an ulp), so a restore + set_lr(initial) is bitwise.
        self._initial_lrs = [lr_value(g["lr"]) for g in optimizer.param_groups]
        self._lr = lr0
        self.initial_lr = lr0
        #: Number of ``step()`` calls so far.
        self.global_step = 0
        self._should_stop = False

        # The current run segment (see _start_segment); _active False: no segment.
        self._active = False
        self._done = 0
        self._seg_len = 0
        self._next_event = 0
        self._lrs: list[float] | None = None
        self._lr_next = 0
        self._eval_every = 0
        self._losses: deque = deque(maxlen=self.MAX_LOSSES)
        self._sink: Callable[[Any], None] | None = self._losses.append
        self._evals: list[list] = []

        # The server link.
        self._link = _ONLINE
        self._registered = False  # a hello was acknowledged (the server knows this job)
        self._retry_at = 0.0
        self._deferred: tuple[str, dict] | None = None
        self._last_request: tuple[str, dict] | None = None
        self._warned: set[str] = set()
        self._offline_since: float | None = None
        self.reports = 0

        # GradScaler-skipped steps (see the class doc): optimizer.step() calls seen by the hook.
        #: ``step()`` calls ignored because the GradScaler skipped that optimizer step.
        self.skipped_steps = 0
        self._opt_steps = 0
        self._opt_steps_seen = 0
        self._step_hook = None

        self._checkpoints = CheckpointStore(model, optimizer, scaler=scaler, include_rng=include_rng,
                                            storage=checkpoint, directory=checkpoint_dir)
        try:
            if self._dist is None:
                self._client = Client(server, job, timeout=self.timeout, secret=secret)
            else:  # rank 0's client; None on the other ranks
                self._client = self._dist.leader_call(lambda: Client(server, job, timeout=self.timeout, secret=secret),
                                                      share=False)
        except BaseException:
            self._checkpoints.close()
            raise
        try:
            self._exchange("hello", self._hello_body(), starting=True)
        except BaseException:
            self._checkpoints.close()
            if self._client is not None:
                self._client.close()
            self._link = _CLOSED
            raise
        if scaler is not None and hasattr(optimizer, "register_step_post_hook"):
            self._step_hook = optimizer.register_step_post_hook(self._count_optimizer_step)

    # --- public ------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The current base LR (param group 0's; the others keep their ratios to it)."""
        return self._lr

    @property
    def should_stop(self) -> bool:
        """True once the tuner said ``stop``: end the training loop."""
        return self._should_stop

    @property
    def online(self) -> bool:
        """Whether the last exchange with the server got an answer (nothing is pending)."""
        return self._link in (_ONLINE, _STOPPED)

    def set_lr(self, lr: float) -> None:
        """Set the base LR: every param group gets ``lr`` times its initial ratio to group 0."""
        lr = float(lr)
        self._lr = lr
        groups = self.optimizer.param_groups
        ratios = self._ratios
        if len(groups) > len(ratios):  # groups added after construction keep their ratio of now
            for g in groups[len(ratios):]:
                ratios.append(1.0 if lr == 0 else lr_value(g["lr"]) / lr)
        initial = self._initial_lrs if lr == self.initial_lr else ()
        for k, (g, ratio) in enumerate(zip(groups, ratios)):
            set_group_lr(g, initial[k] if k < len(initial) else lr * ratio)

    def step(self, loss: Any = None) -> None:
        """Call once after each ``optimizer.step()`` with that step's loss (tensor or float)."""
        if self._step_hook is not None:
            if self._opt_steps == self._opt_steps_seen:  # the GradScaler skipped optimizer.step()
                self.skipped_steps += 1
                return
            self._opt_steps_seen = self._opt_steps
        self.global_step += 1
        if self._active:
            sink = self._sink
            if sink is not None and loss is not None:
                sink(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            self._done += 1
            if self._done >= self._next_event:
                self._segment_event()
        elif self._link == _WAITING or self._link == _DEFERRED:
            self._background()

    on_train_batch_end = step

    def backward(self, loss: torch.Tensor) -> None:
        """Call in place of ``loss.backward()``: the same, plus the Hessian-vector product the
        ``rtho``/``marthe`` tuners need (``create_graph`` only then)."""
        if self._hypergrad is None:
            loss.backward()
        else:
            self._hypergrad.backward(loss)

    def _count_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._opt_steps += 1

    def close(self, reason: str = "done") -> None:
        """Say goodbye (briefly), remove checkpoints and close the socket (idempotent)."""
        if self._link == _CLOSED:
            return
        self._link = _CLOSED
        self._active = False
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        if self._hypergrad is not None:
            self._hypergrad.close()
        try:
            # Not collective: under DDP rank 0 says goodbye alone, so a rank may close on its own.
            if self._registered and self._client is not None:
                body = {"step": self.global_step, "reason": reason}
                outcome = self._talk("request", "goodbye", body, wait=min(self.timeout, self.GOODBYE_TIMEOUT))
                if outcome is None:
                    log.info("autolrs job %s: no reply to goodbye; closing anyway", self.job)
                elif outcome[0] == "error":
                    log.info("autolrs job %s: goodbye answered with %s: %s", self.job, outcome[2], outcome[3])
        except Exception:  # noqa: BLE001 - closing must not mask the user's exception
            log.exception("autolrs job %s: goodbye failed", self.job)
        finally:
            self._checkpoints.close()
            if self._client is not None:
                self._client.close()

    def __enter__(self) -> "AutoLRS":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("error" if exc_type is not None else "done")

    def __repr__(self) -> str:
        return (f"AutoLRS(job={self.job!r}, tuner={self.tuner!r}, server={self.server!r}, "
                f"step={self.global_step}, lr={self._lr:g}, link={self._link})")

    # --- server traffic ----------------------------------------------------------------

    def _server(self, op: str, kind: str | None = None, body: dict | None = None, wait: float = 0.0):
        """The one place that talks to the server (see :meth:`_talk`); under DDP, rank 0 talks
        and every rank gets its outcome."""
        if self._dist is not None:
            return self._dist.server(self._talk, op, kind, body, wait)
        return self._talk(op, kind, body, wait)

    def _talk(self, op: str, kind: str | None = None, body: dict | None = None, wait: float = 0.0):
        """One exchange with the server. Returns plain data (broadcastable):

        ``("ok", kind, reply_body)``, ``("error", kind, code, message)``, or None for no reply
        (yet). ``op``: ``"request"`` sends and waits up to ``wait`` s; ``"send"`` starts a
        request without waiting; ``"poll"`` looks for the pending request's reply without
        waiting and resends it when ``retry_interval`` has passed.
        """
        client = self._client
        try:
            if op == "request":
                return ("ok", kind, client.request(kind, body, timeout=wait))
            if op == "send":
                client.send(kind, body)
                self._retry_at = time.monotonic() + self.retry_interval
                return None
            kind = client.pending_kind
            if kind is None:
                return None
            reply = client.poll_reply(0)
            if reply is None:
                now = time.monotonic()
                if now >= self._retry_at:
                    client.resend()
                    self._retry_at = now + self.retry_interval
                return None
            return ("ok", kind, reply)
        except ServerUnavailable:
            return None
        except ServerError as exc:
            return ("error", kind, exc.code, exc.message)

    def _exchange(self, kind: str, body: dict, *, starting: bool = False, deadline: float | None = None) -> None:
        """Send a request, wait for the reply until ``deadline`` (default: ``timeout`` from now)
        and act on it; on no reply, go on without it (fail open)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        self._last_request = (kind, body)
        outcome = self._server("request", kind, body, wait=max(0.0, deadline - time.monotonic()))
        self._handle(outcome, deadline=deadline, starting=starting)

    def _background(self) -> None:
        """A step while a request is pending or deferred: never blocks."""
        if self._link == _DEFERRED:
            due = time.monotonic() >= self._retry_at
            if self._dist is not None:  # rank 0's clock decides for every rank
                due = self._dist.due(due)
            if not due:
                return
            kind, body = self._deferred
            self._deferred = None
            self._link = _WAITING
            self._server("send", kind, body)
            return
        outcome = self._server("poll")
        if outcome is not None:
            self._handle(outcome, deadline=time.monotonic() + self.timeout)

    def _handle(self, outcome, *, deadline: float, starting: bool = False) -> None:
        if outcome is None:
            if self._link != _WAITING:
                self._link = _WAITING
                self._offline_since = time.monotonic()
                self._retry_at = time.monotonic() + self.retry_interval
            self._warn_once("unavailable", (
                f"autolrs: the tuner server at {self.server} did not answer within {self.timeout:g} s "
                f"(job {self.job}); training continues at the current LR ({self._lr:g}) and the callback "
                f"keeps retrying every {self.retry_interval:g} s in the background"), ServerUnavailableWarning)
            return
        if self._link == _WAITING:
            if self._offline_since is not None:
                log.info("autolrs job %s: the server answered again after %.1f s", self.job,
                         time.monotonic() - self._offline_since)
            self._offline_since = None
        self._link = _ONLINE
        status, kind = outcome[0], outcome[1]
        if status == "ok":
            body = outcome[2]
            if kind == "hello":
                self._registered = True
                if body.get("resumed"):
                    log.info("autolrs job %s: the server resumed an existing session", self.job)
            self._execute(body.get("plan"))
            return
        code, message = outcome[2], outcome[3]
        if kind == "hello" and starting and code in CONFIG_ERRORS:
            raise AutoLRSConfigError(f"the server refused job {self.job!r} ({code}): {message}")
        if code == ErrorCode.UNKNOWN_JOB and kind == "report":
            # The server lost this job (restarted without its state): start it again from here.
            log.warning("autolrs job %s: the server does not know this job any more; sending a new hello at "
                        "step %d", self.job, self.global_step)
            self._registered = False
            self._exchange("hello", self._hello_body(), deadline=deadline)
            return
        if code == ErrorCode.INTERNAL:
            self._warn_once("internal", (
                f"autolrs: the tuner server failed on a {kind} of job {self.job} ({message}); training "
                f"continues at the current LR and the request is retried every {self.retry_interval:g} s"))
            self._deferred = self._last_request
            self._link = _DEFERRED
            self._retry_at = time.monotonic() + self.retry_interval
            return
        self._warn_once("refused", (
            f"autolrs: the tuner server refused a {kind} of job {self.job} ({code}: {message}); the "
            f"callback stops tuning and training continues at the current LR ({self._lr:g})"))
        self._link = _DETACHED
        if code in (ErrorCode.JOB_CONFLICT, ErrorCode.JOB_FINISHED, ErrorCode.UNKNOWN_JOB):
            self._registered = False  # the job is not ours (any more): no goodbye either

    def _hello_body(self) -> dict:
        body = {"tuner": self.tuner, "config": self.config, "initial_lr": self.initial_lr,
                "param_groups": len(self.optimizer.param_groups), "step": self.global_step,
                "max_steps": self.max_steps, "has_val_fn": self.val_fn is not None, "seed": self.seed}
        if self.probe_fn is not None:  # only then, so other hellos stay as they were
            body["has_probe_fn"] = True
        return body

    # --- plans -------------------------------------------------------------------------

    def _execute(self, plan: Any) -> None:
        try:
            actions.validate_plan(plan)
        except ValueError as exc:
            self._warn_once("plan", (
                f"autolrs: job {self.job} got an invalid plan from the server ({exc}); the callback stops "
                f"tuning and training continues at the current LR ({self._lr:g})"))
            self._link = _DETACHED
            return
        self._active = False
        self._losses.clear()
        self._evals = []
        self._probes = []
        for action in plan:
            op = action["op"]
            if op == "set_lr":
                self.set_lr(action["lr"])
            elif op == "checkpoint":
                self._checkpoint(action["slot"])
            elif op == "restore":
                if self._checkpoints.restore(action["slot"]):
                    # The restored optimizer carries the LR it was saved with; the LR is the
                    # plan's business (a set_lr follows a restore), so keep the current one.
                    self.set_lr(self._lr)
                else:
                    self._warn_once("slot", (
                        f"autolrs: job {self.job} was asked to restore checkpoint {action['slot']!r}, which "
                        "does not exist; training continues from the current state"))
            elif op == "discard":
                self._checkpoints.discard(action["slot"])
            elif op == "evaluate":
                self._evals.append([0, self._evaluate()])
            elif op == "probe":
                self._probe(action)
            elif op == "stop":
                self._should_stop = True
                self._link = _STOPPED
                log.info("autolrs job %s: the tuner said stop (%s) at step %d", self.job,
                         action.get("reason", ""), self.global_step)
            else:  # run: validate_plan guarantees it is last
                self._start_segment(action)

    def _checkpoint(self, slot: str) -> None:
        try:
            self._checkpoints.save(slot)
        except (OSError, RuntimeError) as exc:
            self._checkpoints.discard(slot)
            self._warn_once("checkpoint", (
                f"autolrs: job {self.job} could not save checkpoint {slot!r} ({exc}); a later restore of it "
                "will be skipped"))

    def _evaluate(self) -> float:
        if self.val_fn is None:
            self._warn_once("val_fn", (
                f"autolrs: the tuner of job {self.job} asked for an evaluation but the callback has no val_fn; "
                "reporting NaN"))
            return math.nan
        return float(self.val_fn())

    def _probe(self, action: dict) -> None:
        if self.probe_fn is None:
            self._warn_once("probe_fn", (
                f"autolrs: the tuner of job {self.job} asked for a probe but the callback has no probe_fn; "
                "nothing is probed (pass probe_fn= to AutoLRS)"))
            return
        results = run_probes(self._checkpoints, action["slot"], action["lrs"], self.probe_fn, self.set_lr)
        if results is None:
            self._warn_once("probe_slot", (
                f"autolrs: job {self.job} was asked to probe from checkpoint {action['slot']!r}, which does not "
                "exist; nothing is probed"))
            return
        self._probes.extend(results)

    def _start_segment(self, action: dict) -> None:
        steps = action["steps"]
        lrs = action.get("lrs")
        # A client that fell behind (the reply came late) skips the steps it already trained.
        skip = max(0, self.global_step - action["start_step"])
        remaining = steps - skip
        if remaining <= 0:
            # Nothing of the segment is left: report after the next step, at the schedule's
            # last LR.
            remaining = 1
            lrs = None if lrs is None else lrs[-1:]
        elif lrs is not None and skip:
            lrs = lrs[skip:]
        if skip:
            log.info("autolrs job %s: %d step(s) late for a segment starting at step %d; running %d",
                     self.job, skip, action["start_step"], remaining)
        self._seg_len = remaining
        self._done = 0
        self._lrs = lrs
        self._lr_next = 0
        self._eval_every = action.get("eval_every", 0)
        if "hypergrad" in action:
            self._hypergrad_begin(action["hypergrad"])
        self._sink = self._losses.append if "loss" in action.get("collect", ("loss",)) else None
        if lrs is not None:
            self.set_lr(lrs[0])
        self._schedule()
        self._active = True

    def _schedule(self) -> None:
        """Set ``_next_event``: the next count of steps done at which step() has work to do
        (the segment's end, an evaluation, or an LR different from the previous step's)."""
        done = self._done
        nxt = self._seg_len
        every = self._eval_every
        if every:
            nxt = min(nxt, (done // every + 1) * every)
        lrs = self._lrs
        if lrs is not None:
            j = self._lr_next
            if j <= done:
                # Scan forward once per segment in total: the first step whose LR changes.
                j = done + 1
                n = self._seg_len
                while j < n and lrs[j] == lrs[j - 1]:
                    j += 1
                self._lr_next = j
            nxt = min(nxt, j)
        self._next_event = nxt

    def _segment_event(self) -> None:
        done = self._done
        every = self._eval_every
        if every and done % every == 0:
            self._evals.append([done, self._evaluate()])
        if done >= self._seg_len:
            self._finish_segment()
            return
        if self._lrs is not None and done == self._lr_next:
            self.set_lr(self._lrs[done])
        self._schedule()

    def _finish_segment(self) -> None:
        self._active = False
        losses, evals = self._drain_losses(), self._evals
        if self._dist is not None:  # the mean over the ranks, the same on every rank
            losses, evals = self._dist.average(losses, evals)
        body = {"step": self.global_step, "steps": self._done, "losses": losses, "evals": evals, "lr": self._lr}
        if self._probes:
            body["probes"], self._probes = self._probes, []
        self._evals = []
        self.reports += 1
        if self._hypergrad is not None and self._hypergrad.method is not None:
            body["hypergrad"] = self._hypergrad.report()
        self._exchange("report", body)

    def _hypergrad_begin(self, spec: dict) -> None:
        try:
            if self._hypergrad is None:
                self._hypergrad = hypergrad.engine_for(self, *self._hypergrad_args)
            self._hypergrad.configure(spec)
        except ValueError as exc:
            if self.global_step == 0:  # before any training: a setup that cannot work
                raise AutoLRSConfigError(f"tuner {self.tuner!r}: {exc}") from None
            self._warn_once("hypergrad", f"autolrs: job {self.job}: {exc}; training continues at the current LR")

    def _drain_losses(self) -> list[float]:
        buf = list(self._losses)
        self._losses.clear()
        if not buf:
            return []
        if all(isinstance(x, torch.Tensor) for x in buf):
            try:
                # One device-to-host copy per report. Through float64 so every value, whatever
                # its float dtype, becomes exactly the same Python float.
                values = torch.stack(buf).detach().cpu().double()
            except RuntimeError:  # mixed shapes or devices
                return [float(x.float().mean()) for x in buf]
            if values.dim() > 1:
                values = values.reshape(len(buf), -1).mean(1)
            return values.tolist()
        return [float(x.float().mean()) if isinstance(x, torch.Tensor) else float(x) for x in buf]

    # --- warnings ----------------------------------------------------------------------

    def _warn_once(self, key: str, message: str, category: type[Warning] = AutoLRSWarning) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.info("%s", message)
        if self._dist is not None and not self._dist.leader:  # every rank sees the same: warn once, on rank 0
            return
        # Point the warning at the user's line: skip the frames of this package.
        frame, level = sys._getframe(0), 1
        while frame is not None and frame.f_globals.get("__name__", "").startswith("autolrs.callbacks"):
            frame, level = frame.f_back, level + 1
        warnings.warn(message, category, stacklevel=level)

