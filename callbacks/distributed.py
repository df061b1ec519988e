"""The callback under ``torch.distributed`` (DDP): rank 0 talks to the server, every rank acts.

Only rank 0 (the *leader*) has a client. Whatever it gets from the server (the plain-data
outcome of :meth:`ServerLink._server`) is broadcast to the other ranks, which then carry out the
same plan: set the LR, checkpoint, restore, evaluate, run. So replicas stay identical, and all
ranks reach the same collectives at the same steps:

* one broadcast per exchange with the server (a 1-element flag tensor, plus the outcome object
  only when there is one). While a request is pending (a slow or dead server), the ranks look
  for its reply at steps 1, 2, 4, ... up to every :data:`MAX_POLL_GAP` steps after the last
  exchange, a rule they all count alike, so a dead server costs one tiny broadcast per
  ``MAX_POLL_GAP`` steps rather than per step;
* one ``all_reduce`` per report, averaging the segment's losses and evaluations over the ranks
  (plus one for a length check), so rank 0 reports the mean and every rank agrees on it.

An exception on the leader's side of an exchange (a config that cannot be encoded, a bad
endpoint) is broadcast too and raised on every rank, so no rank is left waiting in a collective.
Nothing here is collective in ``close()``: a rank may close alone (say, after its own error).
"""

from __future__ import annotations

import builtins
import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

__all__ = ["DistributedLink", "distributed_link"]

# Flag values broadcast before an outcome.
_NONE, _VALUE, _RAISED = 0, 1, 2

#: Most steps between two looks for a pending reply (or a deferred request's retry time). A
#: reply is acted on at most this many steps late; a plan's start_step covers the lateness.
MAX_POLL_GAP = 32


def distributed_link(mode: bool | None) -> "DistributedLink | None":
    """The link for ``AutoLRS(distributed=mode)``: ``None`` detects an initialised default
    process group with more than one rank, ``False`` never uses one, ``True`` requires one."""
    if mode is not None and not isinstance(mode, bool):
        raise ValueError(f"distributed must be True, False or None, got {mode!r}")
    if mode is False:
        return None
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if mode:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed default process group "
                "(call torch.distributed.init_process_group first)"
            )
        return None
    if dist.get_world_size() < 2 and not mode:
        return None
    return DistributedLink()


class DistributedLink:
    """Collectives on the default process group, on the device its backend needs."""

    def __init__(self):
        dist = torch.distributed
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.leader = self.rank == 0
        backend = str(dist.get_backend()).lower()
        # NCCL moves only CUDA tensors; gloo (and mpi) work on CPU tensors.
        if "nccl" in backend:
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        # Polling back-off: steps until the next look, and the current gap (see MAX_POLL_GAP).
        self._countdown = self._gap = 1

    def __repr__(self) -> str:
        return f"DistributedLink(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # --- leader calls ------------------------------------------------------------------

    def server(self, talk: Callable[..., Any], op: str, *args: Any) -> Any:
        """``talk(op, *args)`` (the callback's one exchange with the server) on the leader, its
        outcome on every rank. ``"poll"`` backs off (see :data:`MAX_POLL_GAP`); a new request
        starts polling afresh."""
        if op == "poll":
            if self._skip():
                return None
            outcome = self.leader_call(talk, op, *args)
            self._backoff(outcome is not None)
            return outcome
        self._countdown = self._gap = 1
        return self.leader_call(talk, op, *args)

    def due(self, value: bool) -> bool:
        """The leader's ``value`` (its clock says a deferred request is due) on every rank,
        consulted with the same back-off as polling."""
        if self._skip():
            return False
        value = self.agree(value)
        self._backoff(value)
        return value

    def _skip(self) -> bool:
        self._countdown -= 1
        return self._countdown > 0

    def _backoff(self, answered: bool) -> None:
        self._gap = 1 if answered else min(2 * self._gap, MAX_POLL_GAP)
        self._countdown = self._gap

    def leader_call(self, fn: Callable[..., Any], *args: Any, share: bool = True, **kwargs: Any) -> Any:
        """Run ``fn`` on the leader only and give its result to every rank (``share=False``:
        the result stays on the leader, the others get None). An exception raised by ``fn`` is
        raised on every rank (the original on the leader, the same builtin type, or a
        RuntimeError, with the leader's message, elsewhere)."""
        flag = torch.zeros(1, dtype=torch.int64, device=self.device)
        payload: list[Any] = [None]
        error: BaseException | None = None
        result = None
        if self.leader:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = exc
                flag[0] = _RAISED
                payload[0] = (type(exc).__name__, str(exc))
            else:
                if share and result is not None:
                    flag[0] = _VALUE
                    payload[0] = result
        torch.distributed.broadcast(flag, src=0)
        code = int(flag.item())
        if code != _NONE:
            torch.distributed.broadcast_object_list(payload, src=0, device=self.device)
        if code == _RAISED:
            if error is not None:
                raise error
            name, message = payload[0]
            kind = getattr(builtins, name, None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(f"rank 0 failed ({name}): {message}")
        if self.leader:
            return result
        return payload[0] if code == _VALUE else None

    def agree(self, value: bool) -> bool:
        """The leader's ``value`` on every rank (for decisions that depend on its clock)."""
        flag = torch.tensor([1 if value else 0], dtype=torch.int64, device=self.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def broadcast_value(self, value: Any) -> Any:
        """The leader's ``value`` (a small picklable object) on every rank."""
        payload = [value]
        torch.distributed.broadcast_object_list(payload, src=0, device=self.device)
        return payload[0]

    # --- reports -----------------------------------------------------------------------

    def average(self, losses: list[float], evals: list[list]) -> tuple[list[float], list[list]]:
        """Mean over the ranks of a segment's losses and of its evaluations' values.

        Every rank has the same number of each when every rank calls ``step(loss)`` alike; if
        not (a rank passed ``None`` for some losses), the last ``min`` losses of every rank are
        averaged, and evaluations that do not line up are left as this rank's own.
        """
        n, m = len(losses), len(evals)
        counts = torch.tensor([n, -n, m, -m], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
        n_max, n_min, m_max, m_min = int(counts[0]), -int(counts[1]), int(counts[2]), -int(counts[3])
        if n_max != n_min:
            log.warning(
                "autolrs: the ranks recorded different numbers of losses in a segment (%d to %d); "
                "averaging the last %d of each",
                n_min,
                n_max,
                n_min,
            )
            losses = losses[len(losses) - n_min :]
        same_evals = m_max == m_min
        if not same_evals:
            log.warning(
                "autolrs: the ranks recorded different numbers of evaluations (%d to %d); reporting rank 0's own",
                m_min,
                m_max,
            )
        values = list(losses) + ([float(v) for _, v in evals] if same_evals else [])
        if not values:
            return list(losses), evals
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        mean = (total / self.world_size).tolist()
        k = len(losses)
        if same_evals:
            evals = [[pos, v] for (pos, _), v in zip(evals, mean[k:])]
        return mean[:k], evals
