"""How :class:`~autolrs.callbacks.callback.AutoLRS` carries out the server's plans: the start
(the hello, the embedded server), each plan's actions in order (set the LR, checkpoint,
restore, discard, evaluate, probe, run a segment), the report that ends a run, and what is
trained while a report waits for its answer (an outage; see the class doc of ``AutoLRS``).

A mixin of ``AutoLRS``: its methods work on the callback's own parts (the link, the segment,
the checkpoint store), set up in ``AutoLRS.__init__``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from autolrs.actions import Observation
from autolrs.callbacks import hypergrad
from autolrs.callbacks.embedded import NOT_STARTED, EmbeddedServerError
from autolrs.callbacks.errors import AutoLRSConfigError, ServerUnavailable, ServerUnavailableWarning
from autolrs.callbacks.options import LinkOptions
from autolrs.callbacks.lr import scheduler_attached
from autolrs.callbacks.probe import run_probes
from autolrs.wire import messages

log = logging.getLogger("autolrs.callbacks.callback")

__all__ = ["EMBEDDED_HELLO_S", "OUTAGE_SLOT", "PlanExecution"]

#: The checkpoint slot that keeps the state at the end of a search run whose report went
#: unanswered, until the server answers (not a name tuners use).
OUTAGE_SLOT = "autolrs:outage"
#: The longest wait for an embedded server's first reply to a job's hello (seconds).
EMBEDDED_HELLO_S = 30.0


class PlanExecution:
    """The plan-carrying half of ``AutoLRS`` (see the module doc)."""

    # The callback's parts and settings, set up by AutoLRS.__init__.
    model: Any
    optimizer: Any
    val_fn: Any
    probe_fn: Any
    tuner: str
    config: dict
    job: str
    seed: Any
    max_steps: Any
    server: str
    timeout: float
    embedded_server: Any
    global_step: int
    reports: int
    discarded: list
    _link: Any
    _segment: Any
    _checkpoints: Any
    _lrs: Any
    _dist: Any
    _warn: Any
    _saved_at: dict
    _allow_scheduler: bool
    _hypergrad_args: dict
    _should_stop: bool
    _probes: list
    # Outages (see AutoLRS's class doc): the plan the last reply sent ahead (``next``), the one
    # being carried out ahead of its reply, whether a step must look for that reply, whether
    # the run is a search's, the search in progress ({"base": its first checkpoint slot, "lr":
    # the LR before it}), and the state to go back to when the server answers a search run's
    # report late. AutoLRS.__init__ starts them through _reset_outage.
    _after: list | None
    _prefetched: list | None
    _polling: bool
    _run_is_search: bool
    _search: dict | None
    _provisional: dict | None
    _hypergrad: Any

    lr: Any  # AutoLRS's property
    initial_lr: Any  # AutoLRS's property

    def set_lr(self, lr: float) -> None:  # AutoLRS's
        raise NotImplementedError

    def _embedded_unstarted(self, problem: str) -> None:
        """The embedded server could not start: untuned training with a warning (or, with
        ``require_server``, :class:`ServerUnavailable`)."""
        if not self._link.require_server:
            self._warn("embedded", problem, ServerUnavailableWarning)
        self._link.detach("embedded", problem)

    def _hello_deadline(self) -> float:
        """``timeout`` from now; for an embedded server, which has just started and may still be
        importing the job's tuner (scikit-learn for ``autolrs``), at least EMBEDDED_HELLO_S."""
        wait = self.timeout if self.embedded_server is None else max(self.timeout, EMBEDDED_HELLO_S)
        return time.monotonic() + wait

    def _embedded_endpoint(self, options: LinkOptions, job: str) -> tuple[LinkOptions, str | None]:
        """``options`` pointed at the embedded server started for ``job`` (on rank 0 alone under
        DDP), and None; or, when it cannot start, a warning for a detached link."""

        def start() -> tuple[str, str | None, bool]:
            try:
                return self.embedded_server.start(job), None, False
            except EmbeddedServerError as exc:
                return "", str(exc), exc.in_use

        endpoint, problem, in_use = start() if self._dist is None else self._dist.leader_call(start)
        if in_use:  # a second live trainer on the job: its server holds the job's folder
            raise AutoLRSConfigError(
                f"job {job!r} is run by another live trainer ({problem}); give this run another job name (job=...)"
            )
        if problem is not None:
            return (
                dataclasses.replace(options, server=NOT_STARTED),
                f"autolrs: {problem}; training continues untuned at the current LR ({self.lr:g})",
            )
        # The server checks this job's own secret (the embedded one's, off rank 0 unused).
        return dataclasses.replace(options, server=endpoint, secret=self.embedded_server.secret), None

    # --- plans -------------------------------------------------------------------------

    def _hello_body(self) -> dict:
        return messages.Hello(
            tuner=self.tuner,
            config=self.config,
            initial_lr=self.initial_lr,
            param_groups=len(self.optimizer.param_groups),
            step=self.global_step,
            max_steps=self.max_steps,
            has_val_fn=self.val_fn is not None,
            has_probe_fn=self.probe_fn is not None,
            seed=self.seed,
        ).to_body()

    def _start(self, reply: Any) -> None:
        """Carry out the answer to a hello sent at construction or by :meth:`load_state_dict`."""
        if reply is None and self._link.pending and self._link.require_server:
            raise ServerUnavailable(
                f"the tuner server at {self.server} did not answer the hello of job {self.job} "
                f"within {self.timeout:g} s (require_server=True)"
            )
        self._act(reply)

    def _act(self, reply: Any, *, on_time: bool = False, ahead: bool = False) -> None:
        """Carry out a plan the link handed over (a reply, already validated, or a plan), in
        order. ``on_time``: the client went back to where it reported, so the plan's run starts
        now whatever the step count says; ``ahead``: it came late, while the client trained on
        the plan sent ahead (see :meth:`Segment.start`)."""
        if reply is None:
            return
        plan = reply if isinstance(reply, list) else reply.plan
        self._after = None if isinstance(reply, list) else reply.next
        self._prefetched, self._polling = None, False
        self._segment.clear()
        self._probes = []
        search = plan[-1]["op"] == "run" and plan[-1].get("search", False)
        if not search:
            self._search = None
        elif self._search is None:  # a search begins: where it starts from, and the LR it leaves
            self._search = {"base": None, "lr": self.lr}
        for action in plan:
            op = action["op"]
            if op == "set_lr":
                self.set_lr(action["lr"])
            elif op == "checkpoint":
                self._checkpoint(action["slot"])
                if search and self._search["base"] is None:
                    self._search["base"] = action["slot"]
            elif op == "restore":
                self._restore(action["slot"])
            elif op == "discard":
                self._checkpoints.discard(action["slot"])
                if search and self._search["base"] == action["slot"]:
                    self._search["base"] = None  # the next checkpoint of the search takes its place
            elif op == "evaluate":
                self._segment.evals.append([0, self._evaluate()])
            elif op == "probe":
                self._probe(action)
            elif op == "stop":
                self._should_stop = True
                self._link.stop()
                log.info(
                    "autolrs job %s: the tuner said stop (%s) at step %d",
                    self.job,
                    action.get("reason", ""),
                    self.global_step,
                )
            else:  # run: the plan's last action
                if "hypergrad" in action:
                    self._hypergrad_begin(action["hypergrad"])
                self._run_is_search = search
                self._segment.start(action, self.global_step, on_time=on_time, ahead=ahead)

    def _report(self) -> None:
        if not self._allow_scheduler:
            self._check_scheduler()  # one made after the callback
        segment = self._segment
        losses, evals = segment.take_losses(), segment.evals
        segment.evals = []
        if self._dist is not None:  # the mean over the ranks, the same on every rank
            losses, evals = self._dist.average(losses, evals)
        hypergrad_report = None
        if self._hypergrad is not None and self._hypergrad.method is not None:
            hypergrad_report = self._hypergrad.report()
        observation = Observation(
            step=self.global_step,
            steps=segment.done,
            losses=losses,
            evals=evals,
            hypergrad=hypergrad_report,
            probes=self._probes,
        )
        self._probes = []
        self.reports += 1
        reply = self._link.exchange("report", messages.Report(observation, lr=self.lr).to_body())
        if reply is None and self._link.pending:
            self._outage()
        else:
            self._act(reply)

    # --- outages -----------------------------------------------------------------------

    def _outage(self) -> None:
        """The report that ended a run got no answer in time; it stays pending (see the class
        doc for what is trained meanwhile)."""
        if self._after is not None:  # the plan that follows whatever the report says
            plan = self._after
            self._act(plan)
            self._prefetched, self._polling = plan, True
            return
        if self._link.require_server:
            raise ServerUnavailable(
                f"the tuner server at {self.server} did not answer the report of job {self.job} "
                f"within {self.timeout:g} s (require_server=True)"
            )
        if self._run_is_search and self._search is not None:
            self._hold_search()

    def _hold_search(self) -> None:
        """No step may train at a trial's LR: keep the end of the search's run for the reply, go
        back to where the search started and train on at the LR from before it."""
        base, lr = self._search["base"], self._search["lr"]
        held = {"step": self.global_step, "lr": self.lr, "base": None, "base_saved": None}
        self._checkpoint(OUTAGE_SLOT)
        if OUTAGE_SLOT not in self._checkpoints:  # could not be saved: nothing to come back to
            self.set_lr(lr)
            return
        if base is not None and self._checkpoints.restore(base):
            held["base"], held["base_saved"] = base, self._saved_at.get(base, 0)
        self.set_lr(lr)
        self._provisional = held
        self._warn(
            "outage-search",
            (
                f"autolrs: job {self.job}: the server did not answer at the end of a search run; training goes on "
                f"{'from where the search started' if held['base'] else 'from here'} at the LR from before the search "
                f"({lr:g}) and these steps are undone when the server answers"
            ),
        )

    def _receive(self, reply: Any) -> None:
        """A reply that came in while its request was pending."""
        if reply is None:
            return
        held = self._provisional
        if held is not None:  # back to the end of the search's run, then the reply as if on time
            self._provisional = None
            self._restore(OUTAGE_SLOT)
            self._checkpoints.discard(OUTAGE_SLOT)
            self.set_lr(held["lr"])
            self._act(reply, on_time=True)
            return
        ahead = self._prefetched is not None and self._segment.active
        if ahead and reply.plan == self._prefetched:
            # The plan being carried out ahead of its reply is the reply's: go on with it.
            self._prefetched, self._polling, self._after = None, False, reply.next
            return
        self._act(reply, ahead=ahead)

    def _reset_outage(self) -> None:
        self._after = self._prefetched = self._search = None
        self._polling = self._run_is_search = False
        if self._provisional is not None:
            self._provisional = None
            self._checkpoints.discard(OUTAGE_SLOT)

    def _check_scheduler(self) -> None:
        if not self._allow_scheduler and scheduler_attached(self.optimizer):
            raise AutoLRSConfigError(
                "an LR scheduler (torch.optim.lr_scheduler) is attached to the optimizer: it would change the LR "
                "behind the tuner's back. Remove it (the tuner sets the LR: tuner='cosine', 'step', ... replace "
                "torch's schedulers), or pass allow_scheduler=True if it only changes other settings"
            )

    def _checkpoint(self, slot: str) -> None:
        try:
            self._checkpoints.save(slot)
            self._saved_at[slot] = self.global_step
        except (OSError, RuntimeError) as exc:
            self._checkpoints.discard(slot)
            self._warn(
                "checkpoint",
                (
                    f"autolrs: job {self.job} could not save checkpoint {slot!r} ({exc}); a later "
                    "restore of it will be skipped"
                ),
            )

    def _restore(self, slot: str) -> None:
        if self._checkpoints.restore(slot):
            saved = self._saved_at.get(slot)
            if saved is not None and self.global_step > saved:
                self.discarded.append([saved, self.global_step])
            # The restored optimizer carries the LR it was saved with; the LR is the plan's
            # business (a set_lr follows a restore), so keep the current one.
            self.set_lr(self.lr)
        else:
            self._warn(
                "slot",
                (
                    f"autolrs: job {self.job} was asked to restore checkpoint {slot!r}, which does "
                    "not exist; training continues from the current state"
                ),
            )

    def _evaluate(self) -> float:
        if self.val_fn is None:
            self._warn(
                "val_fn",
                (
                    f"autolrs: the tuner of job {self.job} asked for an evaluation but the callback "
                    "has no val_fn; reporting NaN"
                ),
            )
            return math.nan
        return float(self.val_fn())

    def _probe(self, action: dict) -> None:
        if self.probe_fn is None:
            self._warn(
                "probe_fn",
                (
                    f"autolrs: the tuner of job {self.job} asked for a probe but the callback has "
                    "no probe_fn; nothing is probed (pass probe_fn= to AutoLRS)"
                ),
            )
            return
        results = run_probes(self._checkpoints, action["slot"], action["lrs"], self.probe_fn, self.set_lr)
        if results is None:
            self._warn(
                "probe_slot",
                (
                    f"autolrs: job {self.job} was asked to probe from checkpoint "
                    f"{action['slot']!r}, which does not exist; nothing is probed"
                ),
            )
            return
        self._probes.extend(results)

    def _hypergrad_begin(self, spec: dict) -> None:
        try:
            if self._hypergrad is None:
                self._hypergrad = hypergrad.engine_for(
                    self.model, self.optimizer, self._lrs, self._warn, val_fn=self.val_fn, **self._hypergrad_args
                )
            self._hypergrad.configure(spec)
        except ValueError as exc:
            if self.global_step == 0:  # before any training: a setup that cannot work
                raise AutoLRSConfigError(f"tuner {self.tuner!r}: {exc}") from None
            self._warn("hypergrad", f"autolrs: job {self.job}: {exc}; training continues at the current LR")
