"""On-device scalars for the hypergradient tuners (``hd``, ``rtho``, ``marthe``).

The server owns the LR rule; this module computes the few numbers it needs, keeping
gradient-sized vectors on the device. Notation: ``w`` weights, ``g = grad L(w) + wd * w`` the
training gradient with (coupled) weight decay, ``d`` the optimizer's update per unit LR
(``w_{t+1} = w_t - lr * d_t``), ``rho`` a param group's ratio of its LR to the base LR.

* ``hd``: at every optimizer step, ``h_t = -sum rho * g_t . d_{t-1}`` (= dL(w_t)/d lr_{t-1}).
  It runs in an optimizer step pre-hook (gradients final, unscaled by a GradScaler, the
  optimizer's state still from the previous step), so plain ``loss.backward()`` is enough.
* ``tangent`` (rtho, marthe): ``Z = dw/d lr``, discounted by ``mu`` each step, with the
  optimizer's own state tangents (momentum buffer for SGD; both Adam moments). The Hessian-vector
  product ``H Z`` comes from ``backward(loss)`` (``create_graph`` only when ``mu > 0`` and Z is
  not zero); the recursion runs in the pre-hook with the LR the step really uses. At the end of
  a segment ``h = grad E_val(w) . Z`` from one validation batch.

Per-step values stay 0-d tensors; :meth:`HypergradEngine.report` turns a segment's worth into
floats in one device-to-host copy, so there is no device sync per step.

Memory (copies of gradient-sized tensors, besides the optimizer's): ``hd`` none for SGD with
plain momentum and for Adam, one for SGD without momentum or with Nesterov (the previous
direction); ``tangent`` Z plus one per optimizer state tangent (SGD: 1, SGD with momentum: 2,
Adam: 3), one more for MARTHE's adaptive mu (the last training gradient), plus the double
backward's graph during ``backward``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Sequence

import torch

from autolrs.callbacks.tangents import adam_direction, adam_tangent, check_optimizer, decoupled, sgd_tangent
from autolrs.callbacks.validation import validation_loss

__all__ = ["HypergradEngine", "check_optimizer", "engine_for"]

#: Per-step hypergradients kept between two reports (the oldest are dropped beyond this).
MAX_PENDING = 10_000


def _lr_of(group: dict) -> Any:
    return group["lr"]


def _axpy(x: torch.Tensor, a: Any, y: torch.Tensor) -> torch.Tensor:
    """``x + a * y`` for a float or a tensor ``a``."""
    return x + y * a if isinstance(a, torch.Tensor) else x.add(y, alpha=a)


class HypergradEngine:
    """Computes and accumulates the hypergradient scalars of one optimizer.

    ``ratios()`` returns each param group's LR ratio to the base LR. ``val_loss()`` returns a
    differentiable validation loss at the current weights (None when there is none).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        ratios: Callable[[], Sequence[float]],
        val_loss: Callable[[], Any] | None,
        warn: Callable[[str, str], None],
        scaler: Any = None,
    ):
        self.kind = check_optimizer(optimizer)
        self._scaler = scaler
        self.model, self.optimizer, self._ratios, self._val_loss, self._warn = model, optimizer, ratios, val_loss, warn
        self.method: str | None = None
        self.mu = 0.0
        self.want_vb = False
        self._hd: deque = deque(maxlen=MAX_PENDING)
        self._prev_dir: dict[torch.Tensor, torch.Tensor] = {}  # hd: the previous direction
        self._Z: dict[torch.Tensor, torch.Tensor] = {}  # tangent: dw/dlr (missing: zero)
        self._S: dict[torch.Tensor, list[torch.Tensor]] = {}  # tangents of the optimizer state
        self._hvp: dict[torch.Tensor, torch.Tensor] | None = None  # H Z from backward()
        self._b: dict[torch.Tensor, torch.Tensor] = {}  # last training gradient (adaptive mu)
        self._step_lrs: list[Any] = []  # each group's LR at the last step (AdamW's hd needs it)
        self.steps = 0
        self.last_report: dict | None = None
        self._hook = optimizer.register_step_pre_hook(self._pre_step)

    # --- configuration ---------------------------------------------------------------------

    def configure(self, spec: dict) -> None:
        """Take a run's ``hypergrad`` spec; a change of method starts from scratch."""
        method = spec["method"]
        if method == "tangent" and self._val_loss is None:
            raise ValueError(
                "rtho and marthe need a validation gradient: pass val_batches (with "
                "val_criterion) or a val_fn returning a differentiable loss"
            )
        if method == "tangent" and self._scaler is not None:
            raise ValueError(
                "rtho and marthe do not support a GradScaler (the Hessian-vector product "
                "would be of the scaled loss); hd does"
            )
        if method != self.method:
            self._hd.clear()
            self._prev_dir.clear()
            self._Z.clear()
            self._S.clear()
            self._b.clear()
            self._hvp = None
        self.method = method
        self.mu = float(spec.get("mu", 0.0))
        self.want_vb = bool(spec.get("vb", False))

    def close(self) -> None:
        self._hook.remove()
        self._Z.clear()
        self._S.clear()
        self._prev_dir.clear()
        self._b.clear()

    def _params(self) -> Iterable[tuple[int, dict, torch.Tensor]]:
        for k, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    yield k, group, p

    # --- backward: the Hessian-vector product ------------------------------------------------

    def needs_graph(self) -> bool:
        return self.method == "tangent" and self.mu > 0 and bool(self._Z)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, plus ``H Z`` when the tangent recursion needs it."""
        if not self.needs_graph():
            loss.backward()
            return
        params = [p for _, _, p in self._params()]
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        for p, g in zip(params, grads):  # what loss.backward() would have done
            if g is not None:
                g = g.detach()
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        dots = [(g * self._Z[p]).sum() for p, g in zip(params, grads) if g is not None and p in self._Z]
        hvp: tuple = (None,) * len(params)
        if dots:
            dot = torch.stack(dots).sum() if len(dots) > 1 else dots[0]
            if dot.requires_grad:  # False when the loss is linear in every parameter
                try:
                    hvp = torch.autograd.grad(dot, params, allow_unused=True)
                except RuntimeError as exc:  # an op without double backward: fail open, first order
                    self._warn(
                        "hypergrad_hvp",
                        (
                            f"autolrs: the Hessian-vector product failed ({exc}); the tangent recursion goes "
                            "on without its second-order term"
                        ),
                    )
        acc = self._hvp if self._hvp is not None else {}
        for p, hz in zip(params, hvp):
            if hz is not None:
                acc[p] = acc[p] + hz if p in acc else hz
        self._hvp = acc

    # --- the optimizer step pre-hook -----------------------------------------------------------

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.method is None:
            return
        with torch.no_grad():
            if self.method == "hd":
                self._hd_step()
            else:
                self._tangent_step()
        self._hvp = None
        self._step_lrs = [_lr_of(g) for g in self.optimizer.param_groups]
        self.steps += 1

    def _grad(self, group: dict, p: torch.Tensor) -> torch.Tensor | None:
        g = p.grad
        if g is None:
            return None
        if g.is_sparse:
            g = g.to_dense()
        wd = 0 if decoupled(group) else group.get("weight_decay", 0)
        return g.add(p, alpha=wd) if wd else g

    def _hd_step(self) -> None:
        ratios = self._ratios()
        opt_state = self.optimizer.state
        dots = []
        for k, group, p in self._params():
            g = self._grad(group, p)
            if g is None:
                continue
            st = opt_state.get(p, {})
            if self.kind == "adam":
                prev = adam_direction(group, st)
                if prev is not None and decoupled(group) and k < len(self._step_lrs):
                    # AdamW's last step: w_t = w_{t-1} (1 - lr wd) - lr a, so its direction is
                    # a + wd w_{t-1}, with w_{t-1} = (w_t + lr a) / (1 - lr wd).
                    lr_prev, wd = self._step_lrs[k], group["weight_decay"]
                    w_prev = _axpy(p, lr_prev, prev) / (1 - lr_prev * wd)
                    prev = prev.add_(w_prev, alpha=wd)
            else:
                m, nesterov = group.get("momentum", 0), group.get("nesterov", False)
                buf = st.get("momentum_buffer")
                if m and not nesterov:
                    prev = buf  # the buffer is the direction: no copy
                else:
                    prev = self._prev_dir.get(p)
                    if m:  # Nesterov: g + m * buf_new; buf_new as torch.optim.SGD forms it
                        damp = group.get("dampening", 0)
                        new_buf = g.clone() if buf is None else (buf * m).add_(g, alpha=1 - damp)
                        self._prev_dir[p] = g.add(new_buf, alpha=m)
                    else:
                        self._prev_dir[p] = g.clone()
            if prev is not None:
                dots.append((g * prev).sum() * (-ratios[k]))
        self._hd.append(_total(dots))

    def _tangent_step(self) -> None:
        ratios = self._ratios()
        opt_state = self.optimizer.state
        mu, hvp = self.mu, self._hvp
        if hvp is None and mu > 0 and self._Z:
            self._warn(
                "hypergrad_backward",
                (
                    "autolrs: rtho/marthe need the Hessian-vector product: call cb.backward(loss) instead of "
                    "loss.backward(); until then the tangent recursion drops its second-order term"
                ),
            )
        for k, group, p in self._params():
            g = self._grad(group, p)
            if g is None:
                continue
            lr, rho = _lr_of(group), ratios[k]
            z = self._Z.get(p)
            # dg/dlr = (H + wd) Z (coupled weight decay), H Z (AdamW's)
            dg = None if hvp is None else hvp.get(p)
            is_decoupled = decoupled(group)
            wd = group.get("weight_decay", 0)
            if z is not None and wd and not is_decoupled:
                dg = z * wd if dg is None else dg.add(z, alpha=wd)
            st = opt_state.get(p, {})
            if self.kind == "sgd":
                direction, ddir, new_s = sgd_tangent(group, st, g, dg, self._S.get(p))
            else:
                direction, ddir, new_s = adam_tangent(group, st, g, dg, self._S.get(p))
            if is_decoupled:  # w' = w - lr (a + wd w): direction a + wd w, its LR derivative da + wd Z
                direction = direction.add(p, alpha=wd)
                if z is not None:
                    ddir = z * wd if ddir is None else ddir.add(z, alpha=wd)
            # Z <- mu * (Z - lr * d(direction)/dlr) - rho * direction
            z_new = -rho * direction if rho != 1 else -direction
            if mu > 0:
                mem = z if z is not None else None
                if ddir is not None:
                    step = ddir * lr if isinstance(lr, torch.Tensor) else ddir * float(lr)
                    mem = -step if mem is None else mem - step
                if mem is not None:
                    z_new = z_new.add(mem, alpha=mu)
            self._Z[p] = z_new
            if mu > 0 and new_s is not None and any(s is not None for s in new_s):
                self._S[p] = [None if s is None else s * mu for s in new_s]
            else:
                self._S.pop(p, None)
            if self.want_vb:
                self._b[p] = g.clone() if g is p.grad else g

    # --- the report ------------------------------------------------------------------------------

    def report(self) -> dict | None:
        """The segment's scalars as floats (one device-to-host copy); None when not configured."""
        if self.method is None:
            return None
        try:
            report = self._report()
        except (RuntimeError, ValueError, TypeError, StopIteration) as exc:  # fail open: no hypergradient
            self._warn(
                "hypergrad_report",
                f"autolrs: computing the hypergradient failed ({exc!r}); reported without it (the server keeps the LR)",
            )
            report = {"h": [], "vb": None, "val_loss": None}
        report["optimizer"] = self.kind  # the server scales its default hyper-LR by it
        self.last_report = report
        return report

    def _report(self) -> dict:
        values: list[torch.Tensor] = []
        vb = val = None
        if self.method == "hd":
            values = list(self._hd)
            self._hd.clear()
        elif self._Z:
            out = self._validation_dots()
            if out is not None:
                h, vb, val = out
                values = [h]
        extra = [x for x in (vb, val) if x is not None]
        floats = _to_floats(values + extra)
        n = len(values)
        return {
            "h": floats[:n],
            "vb": floats[n] if vb is not None else None,
            "val_loss": floats[-1] if val is not None else None,
        }

    def _validation_dots(self):
        params = [p for _, _, p in self._params()]
        with torch.enable_grad():
            loss = self._val_loss()
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            self._warn(
                "hypergrad_val",
                (
                    "autolrs: the validation loss for rtho/marthe has no autograd graph (a val_fn under "
                    "torch.no_grad()?); pass val_batches, or a val_fn that returns a differentiable loss; "
                    "no hypergradient is reported"
                ),
            )
            return None
        loss = loss.mean() if loss.dim() else loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        hz, hb = [], []
        for p, vg in zip(params, grads):
            if vg is None:
                continue
            if p in self._Z:
                hz.append((vg * self._Z[p]).sum())
            if self.want_vb and p in self._b:
                hb.append((vg * self._b[p]).sum())
        return _total(hz), (_total(hb) if self.want_vb else None), loss.detach()


def _total(dots: list[torch.Tensor]) -> torch.Tensor:
    """Sum 0-d tensors (possibly on several devices) without a sync."""
    if not dots:
        return torch.zeros(())
    device, dtype = dots[0].device, dots[0].dtype
    return torch.stack([d.to(device, dtype, non_blocking=True) for d in dots]).sum()


def _to_floats(values: list[torch.Tensor]) -> list[float]:
    if not values:
        return []
    device = values[0].device
    stacked = torch.stack([v.detach().to(device).double().reshape(()) for v in values])
    return stacked.cpu().tolist()


def engine_for(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lrs: Any,
    warn: Callable[..., None],
    *,
    val_fn: Callable[[], Any] | None = None,
    val_batches: Any = None,
    val_criterion: Callable | None = None,
    scaler: Any = None,
) -> HypergradEngine:
    """The engine of a callback's model and optimizer. ``lrs`` (a
    :class:`~autolrs.callbacks.lr.GroupLRs`) gives the param groups' ratios to the base LR;
    ``warn(key, message)`` issues a warning once. The validation loss comes from
    ``val_batches`` or else ``val_fn`` (:func:`~autolrs.callbacks.validation.validation_loss`)."""
    val_loss = validation_loss(model, val_fn, val_batches, val_criterion)
    return HypergradEngine(model, optimizer, lambda: lrs.ratios, val_loss, warn, scaler)
