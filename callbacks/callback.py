"""``AutoLRS``: the object a training loop calls after every ``optimizer.step()``.

It carries out the server's plans (see :mod:`autolrs.actions`): set the LR, checkpoint,
restore, discard, evaluate, probe, run a segment of steps and report its losses, stop. The work
is split by job: :mod:`~autolrs.callbacks.link` talks to the server and fails open,
:mod:`~autolrs.callbacks.segment` trains the current ``run``, :mod:`~autolrs.callbacks.lr`
writes the LRs, :mod:`~autolrs.callbacks.state` keeps the checkpoints,
:mod:`~autolrs.callbacks.plans` carries out each plan and rides out outages,
:mod:`~autolrs.callbacks.job_state` lays out the state dict, :mod:`~autolrs.callbacks.optimizer_steps`
tells a step the GradScaler skipped, and this module ties them together.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

import torch

from autolrs.callbacks import hypergrad
from autolrs.callbacks.distributed import distributed_link
from autolrs.callbacks.embedded import AUTO, EmbeddedServer
from autolrs.callbacks.errors import AutoLRSConfigError, WarnOnce
from autolrs.callbacks.job_state import STATE_VERSION, JobState
from autolrs.callbacks.link import CLOSED, DETACHED, ServerLink
from autolrs.callbacks.lr import GroupLRs
from autolrs.callbacks.optimizer_steps import OptimizerSteps
from autolrs.callbacks.plans import PlanExecution
from autolrs.callbacks.options import JobOptions, LinkOptions, checkpoint_storage, default_job_id
from autolrs.callbacks.segment import Segment
from autolrs.callbacks.state import CheckpointStore

log = logging.getLogger(__name__)

__all__ = ["AutoLRS", "STATE_VERSION", "default_job_id"]  # STATE_VERSION: see job_state


class AutoLRS(PlanExecution):
    """Learning-rate tuning by an autolrs server, one line after ``optimizer.step()``::

        with AutoLRS(model, optimizer, tuner="auto", max_steps=len(loader) * epochs) as cb:
            for x, y in loader:
                ...
                optimizer.step()
                cb.step(loss)
                if cb.should_stop:
                    break

    The job: ``tuner`` and its knobs ``config``, the job id ``job`` (default: host, pid and a
    random suffix), the step budget ``max_steps`` and the tuner's ``seed`` if known. The server:
    ``server`` (an endpoint such as ``"tcp://host:5555"``, or ``"auto"``, the default:
    ``$AUTOLRS_SERVER`` when set, else a private server in a child process for this job, see
    :mod:`autolrs.callbacks.embedded`), ``timeout`` (no call waits longer for it), ``retry_interval``
    (background retries while it does not answer), ``secret`` (signs requests; default from
    ``$AUTOLRS_SECRET`` / ``$AUTOLRS_SECRET_FILE``). What the tuners may ask of the loop:
    ``dashboard=True`` has the embedded server serve the dashboard and print its URL
    (:attr:`dashboard_url`). ``val_fn()`` returns a validation loss (float or 0-d tensor; it handles ``model.eval()``
    and back); ``probe_fn()`` returns the loss of the current batch with its graph (the
    ``loss_diff`` tuner); ``val_batches`` and ``val_criterion`` give ``rtho``/``marthe`` their
    validation gradient. Checkpoints: ``scaler`` (a GradScaler) and, with ``include_rng``, the
    RNG states are part of each. ``checkpoint`` places them: ``"memory"`` (the default without
    ``checkpoint_dir``) on the tensors' devices, ``"cpu"`` in host memory (pinned, copied
    asynchronously from CUDA), ``"disk"`` (the default when ``checkpoint_dir`` is given) in a
    private folder under ``checkpoint_dir`` (default: the temp dir), removed at close, or at the
    next start of a callback on this host after a crash. ``distributed``: see
    :mod:`autolrs.callbacks.distributed`.

    A step the GradScaler skipped (inf/NaN gradients) is not a step: it is counted in
    ``skipped_steps`` only (detected by an optimizer step post-hook: no device sync).
    The server's refusals at start raise :class:`AutoLRSConfigError`; everything else fails
    open (see :mod:`autolrs.callbacks.link`), unless ``require_server=True``: then a server
    that does not answer (or refuses) raises :class:`~autolrs.callbacks.ServerUnavailable`
    (:class:`~autolrs.callbacks.ServerError`) instead. An LR scheduler attached to the optimizer
    raises :class:`AutoLRSConfigError` unless ``allow_scheduler=True`` (it would write LRs
    behind the tuner's back).

    While a report waits for its answer (an outage), training goes on: with the plan the server
    sent ahead (a schedule's next chunk), so it stays exactly on plan; after a search's run (an
    AutoLRS trial, a range test's sweep) from where the search started, at the LR from before it,
    and those steps are undone when the server answers (the reply is then carried out as if it
    had come on time); otherwise at the current LR.
    """

    #: Upper bound of the wait for the goodbye reply at :meth:`close` (unless told otherwise).
    GOODBYE_TIMEOUT = ServerLink.GOODBYE_TIMEOUT
    MAX_LOSSES = Segment.MAX_LOSSES

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        tuner: str = "constant",
        config: dict | None = None,
        server: str = AUTO,
        job: str | None = None,
        val_fn: Callable[[], Any] | None = None,
        *,
        scaler: Any = None,
        include_rng: bool = False,
        probe_fn: Callable[[], Any] | None = None,
        val_batches: Any = None,
        val_criterion: Callable[..., Any] | None = None,
        checkpoint: str | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        timeout: float = 5.0,
        retry_interval: float = 5.0,
        max_steps: int | None = None,
        seed: int | None = None,
        distributed: bool | None = None,
        secret: str | bytes | None = None,
        require_server: bool = False,
        allow_scheduler: bool = False,
        dashboard: bool = False,
    ):
        options = JobOptions.checked(tuner, config, job, max_steps, seed)
        link_options = LinkOptions.checked(server, timeout, retry_interval, secret, require_server)
        if not isinstance(allow_scheduler, bool):
            raise ValueError(f"allow_scheduler must be True or False, got {allow_scheduler!r}")
        self.optimizer, self._allow_scheduler = optimizer, allow_scheduler
        self._check_scheduler()
        self._lrs = GroupLRs(optimizer)
        # DDP: rank 0 talks to the server for all ranks, under its job id.
        self._dist = distributed_link(distributed)
        job = options.job if self._dist is None else self._dist.broadcast_value(options.job)

        self.model, self.optimizer, self.val_fn, self.probe_fn = model, optimizer, val_fn, probe_fn
        self.tuner, self.config, self.job = options.tuner, options.config, job
        self.max_steps, self.seed = options.max_steps, options.seed
        #: The private server of ``server="auto"`` without ``$AUTOLRS_SERVER`` (None otherwise):
        #: its ``state_dir`` holds the job's decision log while the callback is open.
        self.embedded_server: EmbeddedServer | None = None
        if link_options.server == AUTO:
            self.embedded_server = EmbeddedServer(dashboard=bool(dashboard))
        self.server, self.timeout, self.retry_interval = (
            link_options.server,
            link_options.timeout,
            link_options.retry_interval,
        )
        #: ``step()`` calls so far (GradScaler-skipped ones excluded), and reports sent.
        self.global_step = 0
        self.reports = 0
        #: ``step()`` calls ignored because the GradScaler skipped that optimizer step.
        self.skipped_steps = 0
        self._should_stop = False
        self._closed = False
        self._summary: dict | None = None
        #: ``[saved_at, restored_at]`` global-step windows whose training a restore threw away
        #: (search trials, range tests, rollbacks): the steps off the path to the final weights.
        self.discarded: list[list[int]] = []
        self._saved_at: dict[str, int] = {}
        self._warn = WarnOnce(leader=self._dist is None or self._dist.leader)
        if dashboard and self.embedded_server is None:
            self._warn(
                "dashboard",
                f"autolrs: dashboard=True is for the embedded server; the server at "
                f"{self.server} serves one when started with --http-port",
            )
        self._segment = Segment(self.set_lr, self._evaluate, job)
        self._probes: list[list[float]] = []  # [loss_before, loss_after] per probed LR, for the next report
        self._hypergrad: hypergrad.HypergradEngine | None = None
        self._hypergrad_args = {"val_batches": val_batches, "val_criterion": val_criterion, "scaler": scaler}
        self._scaler = scaler
        self._provisional = None
        self._reset_outage()  # no outage (see the class doc and plans.py)

        self._checkpoints = CheckpointStore(
            model,
            optimizer,
            scaler=scaler,
            include_rng=include_rng,
            storage=checkpoint_storage(checkpoint, checkpoint_dir),
            directory=checkpoint_dir,
        )
        self._link: ServerLink | None = None
        unstarted: str | None = None  # why the embedded server could not start
        try:
            if self.embedded_server is not None:
                link_options, unstarted = self._embedded_endpoint(link_options, job)
                self.server = link_options.server
            self._link = ServerLink(
                link_options,
                job,
                dist=self._dist,
                warn=self._warn,
                hello_body=self._hello_body,
                lr=lambda: self.lr,
                step=lambda: self.global_step,
            )
            if unstarted is None:
                self._start(
                    self._link.exchange(
                        "hello", self._hello_body(), starting=True, owner_may_load=True, deadline=self._hello_deadline()
                    )
                )
            else:
                self._embedded_unstarted(unstarted)
        except BaseException:
            self._closed = True
            self._checkpoints.close()
            if self._link is not None:
                self._link.close()
            if self.embedded_server is not None:
                self.embedded_server.stop()
            raise
        self._optimizer_steps = OptimizerSteps(optimizer)

    # --- public ------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The current base LR (param group 0's; the others keep their ratios to it)."""
        return self._lrs.base

    @property
    def initial_lr(self) -> float:
        """Param group 0's LR when the callback was built."""
        return self._lrs.initial

    def get_last_lr(self) -> list[float]:
        """Every param group's LR now (torch's scheduler method of the same name)."""
        return self._lrs.current()

    @property
    def should_stop(self) -> bool:
        """True once the tuner said ``stop``: end the training loop."""
        return self._should_stop

    @property
    def online(self) -> bool:
        """Whether the last exchange with the server got an answer (nothing is pending)."""
        return self._link is not None and self._link.online

    @property
    def dashboard_url(self) -> str | None:
        """The embedded server's dashboard (with ``dashboard=True``), token included; else None."""
        return None if self.embedded_server is None else self.embedded_server.dashboard_url

    @property
    def summary(self) -> dict | None:
        """The job's summary from its tuner, as the server's goodbye reply carried it: None
        until :meth:`close` (and when the goodbye went unanswered; under DDP, off rank 0)."""
        return self._summary

    def set_lr(self, lr: float) -> None:
        """Set the base LR: every param group gets ``lr`` times its initial ratio to group 0."""
        self._lrs.set(lr)

    def step(self, loss: Any = None) -> None:
        """Call once after each ``optimizer.step()`` with that step's loss (tensor or float)."""
        if self._optimizer_steps.stepped() is False:
            if self._scaler is not None:  # the GradScaler skipped optimizer.step()
                self.skipped_steps += 1
                return
            if loss is not None:
                self._warn(
                    "no-optimizer-step",
                    f"autolrs: job {self.job}: cb.step() was called with no optimizer.step() since the last "
                    "call; call it once after each optimizer.step() (the step is counted all the same)",
                )
        self.global_step += 1
        segment = self._segment
        if segment.active:
            if segment.advance(loss) and segment.event():
                self._report()
            elif self._polling:  # a report is pending while the plan sent ahead runs
                self._receive(self._link.background())
        elif self._link.pending:
            self._receive(self._link.background())
        elif self._link.conflict is not None:
            raise AutoLRSConfigError(self._link.conflict)

    on_train_batch_end = step

    def backward(self, loss: torch.Tensor) -> None:
        """Call in place of ``loss.backward()``: the same, plus the Hessian-vector product the
        ``rtho``/``marthe`` tuners need (``create_graph`` only then)."""
        if self._hypergrad is None:
            loss.backward()
        else:
            self._hypergrad.backward(loss)

    def close(self, reason: str = "done", *, timeout: float | None = None, end_job: bool = True) -> None:
        """Say goodbye (waiting up to ``timeout`` s for the reply, by default briefly), keep
        the job's :attr:`summary` it carries, remove checkpoints, close the socket (idempotent).
        ``end_job=False`` leaves without goodbye: the job stays open on the server, so a
        trainer restarted from a checkpoint (:meth:`load_state_dict`) can resume it, as after
        a crash (the framework adapters do this when training stops on an exception)."""
        if self._closed:
            return
        self._closed = True
        self._segment.clear()
        self._optimizer_steps.close()
        if self._hypergrad is not None:
            self._hypergrad.close()
        if self._link.decisions == 0 and self._link.state != DETACHED:  # detaching said so already
            self._warn(
                "no-decision",
                f"autolrs: job {self.job} never received a decision from the tuner server at {self.server}: the "
                "run was not tuned (was the server running and reachable?)",
            )
        if self._provisional is not None and self._provisional["base"] is not None:
            # The server never answered: the search's run is off the path to the final weights.
            self.discarded.append([self._provisional["base_saved"], self._provisional["step"]])
        reply = None
        try:
            if end_job:
                if timeout is None and self.embedded_server is not None:
                    # The job's own local server: worth the full wait, since an unanswered
                    # goodbye leaves its folder behind as a job to resume.
                    timeout = self.timeout
                reply = self._link.goodbye(self.global_step, reason, timeout, lr=self.lr)
            if reply is not None:
                self._summary = reply.summary
        except Exception:  # noqa: BLE001 - closing must not mask the user's exception
            log.exception("autolrs job %s: goodbye failed", self.job)
        finally:
            self._checkpoints.close()
            self._link.close()
            if self.embedded_server is not None:  # an answered goodbye ended the job: nothing to resume
                self.embedded_server.stop(ended=reply is not None)

    def __enter__(self) -> "AutoLRS":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("error" if exc_type is not None else "done")

    def __repr__(self) -> str:
        state = CLOSED if self._closed or self._link is None else self._link.state
        return (
            f"AutoLRS(job={self.job!r}, tuner={self.tuner!r}, server={self.server!r}, "
            f"step={self.global_step}, lr={self.lr:g}, link={state})"
        )

    # --- state -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What a restarted trainer needs to carry on with the same tuning job (plain data: save
        it in your checkpoint beside the model's and the optimizer's). Versioned by
        ``"version"``; later versions add keys and older ones still load. ``client_id`` and
        ``seq`` are this process's (rank 0's under DDP, None elsewhere); ``credential`` is the
        job's (None until the server issued it): it proves to the server that the trainer
        restored from this dict owns the job, so keep the checkpoint as private as the job
        (the layout: :class:`~autolrs.callbacks.job_state.JobState`)."""
        return JobState(
            job=self.job,
            tuner=self.tuner,
            config=self.config,
            lrs=self._lrs.state_dict(),
            step=self.global_step,
            skipped_steps=self.skipped_steps,
            reports=self.reports,
            stopped=self._should_stop,
            credential=self._link.credential,
            client_id=self._link.client_id,
            seq=self._link.next_seq,
        ).to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Carry on with the job of ``state`` (from :meth:`state_dict`) at its step. Build the
        callback with the same tuner and config, and load the model's and optimizer's state from
        the same checkpoint. This process takes the job over as a new client: it says hello at
        the restored step with the job's credential and the server answers with the job's
        current plan (fail open, like any hello; refusals raise :class:`AutoLRSConfigError`).
        The job this callback started at construction, if another one, is closed with goodbye
        (reason ``replaced``). Call it before the first :meth:`step`."""
        saved = JobState.checked(state, self.tuner, self.config)
        job = saved.job
        GroupLRs(self.optimizer).load_state_dict(saved.lrs)  # check it before anything changes
        unstarted = None  # why the embedded server of the job could not start
        if job != self.job or not self._link.registered:
            # Another job, or this one held by its trainer (the state's credential proves it is us),
            # or a hello that got no answer: a new client for the job, with its credential.
            replaced = self._link.goodbye(self.global_step, "replaced")
            if job != self.job and self.embedded_server is not None:  # the job's own server, on its own folder
                self.embedded_server.stop(ended=replaced is not None)
                options, unstarted = self._embedded_endpoint(self._link.options, job)
                self._link.options, self._link.server = options, options.server
                self.server = options.server
            self._link.connect(job, saved.credential)
            self.job = self._segment.job = job
        # Else the constructor's hello created this job id afresh (the saved job had finished or
        # the server had lost it): the new session is ours, under its own credential.
        self._lrs.load_state_dict(saved.lrs)
        self.global_step, self.skipped_steps, self.reports = saved.step, saved.skipped_steps, saved.reports
        self._segment.clear()
        self._probes = []
        self._reset_outage()
        self._should_stop = saved.stopped
        if self._should_stop:  # the tuner had said stop: nothing more to ask of it
            self._link.stop()
            return
        if unstarted is not None:
            self._embedded_unstarted(unstarted)
            return
        self._start(self._link.exchange("hello", self._hello_body(), starting=True, deadline=self._hello_deadline()))
