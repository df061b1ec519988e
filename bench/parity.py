"""Parity with the original implementations: each seed method with its default knobs against a
reference implementation of the original's rule, on the quality suite's tasks (bench/tasks.py).

    python bench/parity.py                    # every task, 3 seeds, short budget (~9 CPU minutes;
                                              # 12.5-15 min wall on 2 cores at load average 9-11)
    python bench/parity.py --quick            # digits_mlp, digits_gru, cancer_small, 2 seeds (4 min at load 11)
    python bench/parity.py --tasks digits_mlp --parts hd --seeds 0 1 2 --hd-config '{"beta": 1e-3}'
    python bench/parity.py --parts hd marthe --start-factors 1 10 --grid-from bench/out/parity.json
    python bench/parity.py --reprint bench/out/parity.json

What runs, per task and seed (same initial weights, same batches, same validation batches):

* ``grid``: the task's optimizer at each constant LR of its grid (bench/tasks.py); the *grid best*
  is the constant LR with the best median metric.
* ``alrao``: ``autolrs.optim`` Alrao (the task's model, its last Linear replaced by 10 copies;
  AlraoSGD without momentum for SGD tasks, AlraoAdam for Adam(W) tasks, both on [1e-5, 1], the
  original scripts' defaults) with the product's default Switch, against the same model,
  optimizer, copies and sampled LRs with :class:`OriginalSwitch` below in place of the Switch.
* ``hd`` and ``marthe``: the tuner with its default knobs, through a real server and the real
  callback, from 10x below the grid best (``--start-factors``), against the AdaTune rule written
  below (in process, one hyper step per training step, the same hyper-LR ``beta`` the tuner used,
  and its ``mu``), from the same LR. Runs with attention use the math attention kernel (the fused
  CPU kernel has no double backward, which MARTHE's Hessian-vector product needs).

The references follow /work/shared/reference/algorithms.md (sections 3 and 4.4), written here, not
copied from the original repositories:

* :class:`OriginalSwitch`: Alrao's Switch (van Erven et al., Alg. 1) with the original's
  likelihood, ``-loss`` of each copy averaged over the batch (mean-reduced NLL).
* :class:`AdaTuneHD`: AdaTune's ``SGDHD`` (one flat hypergradient ``h = g_t . d_{t-1}`` over all
  parameters, weight decay in ``g``, ``lr += beta * h`` before the step, no clamp) and ``AdamHD``
  (the LR moved once per parameter tensor, in order, ``h_p = g . m/(sqrt(v)+eps) *
  sqrt(1-b2^(t-1))/(1-b1^(t-1))`` from the moments before the step, Adam with eps outside the bias
  correction, no clamp).
* :class:`AdaTuneMarthe`: AdaTune's ``MuSGD``/``MuAdam`` loop: per training step the tangent
  ``Z = dw/dlr`` (Hessian-vector product through a ``create_graph`` gradient), the step, then
  ``h = grad E_val(w_{t+1}) . Z`` on the next validation batch, ``lr -= beta * h`` (no clamp),
  element-wise clipping of the vectors at 100 (AdaTune's CLI default), and the adaptive mu
  (``q = lr / (grad E_val . g_t)``, ``z = clip(q, 0, 1)``, ``c <- c*sign(mu) + mu``,
  ``mu <- z^(1/(1+c))``). Where AdaTune is wrong the rule AdaTune means is used (as the product
  does): the current LR in the recursion instead of the initial one, weight decay in the gradient
  and the Hessian term, the Adam tangent derived anew, mu starting at 0 instead of ``z^(1/0)``,
  ``mu = 0`` when the dot product is not positive, the validation batch in eval mode.
* AdamW (digits_attention; AdaTune has no AdamW): both references add the decoupled decay,
  ``w <- w (1 - lr wd) - lr a``, to the direction (``a + wd w``) and keep it out of the gradient.

Reported per task: Alrao default vs original (median and worst seed of the task's test metric,
validation metric too); hd/marthe vs the AdaTune rule: final LR, gap of the median metric to the
grid best (accuracy points, or percent of the loss), worst seed, runs that diverged (a non-finite
loss or metric) or collapsed (to chance: ``tasks.collapsed``). Each run uses one thread, two at a
time. A table on stdout, JSON under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchlib import write_report
from tasks import TASKS, Batches, Task, collapsed, evaluate, metric_of

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

PARTS = ("alrao", "hd", "marthe")
QUICK_TASKS = ("digits_mlp", "digits_gru", "cancer_small")
ALRAO_INTERVAL = (1e-5, 1.0)  # the original's main_cnn.py defaults (--minLR -5 --maxLR 0)
ALRAO_COPIES = 10
VAL_BATCH = 64
START_FACTOR = 0.1  # hd/marthe start 10x below the grid's best constant LR
ADATUNE_CLIP = 100.0  # AdaTune's --grad-clipping default: element-wise, on every vector


# ------------------------------------------------------------------------------ the references


class OriginalSwitch(nn.Module):
    """Alrao's original Switch (algorithms.md 4.4): log-weights ``w`` (2 x N), posterior, ``t``;
    an update multiplies both rows by ``exp(l_j)`` with ``l_j = -loss(output_j, y)``, the loss
    mean-reduced over the batch (the original's likelihood); pools ``pi_t = 1/(t+1)`` of row 0 and
    shares it out with ``theta``; normalises. Same interface as ``autolrs.optim.Switch`` so it can
    replace ``AlraoModel.switch``."""

    def __init__(self, n: int, loss, task: str = "classification", theta: float = 0.9999):
        super().__init__()
        self.n, self.loss, self.task, self.theta = n, loss, task, theta
        self.logw = torch.tensor([[math.log(theta / n)] * n, [math.log((1 - theta) / n)] * n], dtype=torch.float64)
        self.logpost = torch.full((n,), -math.log(n), dtype=torch.float64)
        self.t = 1

    def posterior(self) -> torch.Tensor:
        return self.logpost.exp()

    @torch.no_grad()
    def update(self, outputs, y) -> torch.Tensor:
        return self.update_losses(torch.stack([self.loss(o, y).detach() for o in outputs]), y)

    @torch.no_grad()
    def update_losses(self, losses: torch.Tensor, y) -> torch.Tensor:
        """The update from each copy's mean loss on the batch (``alrao_step`` computes them)."""
        losses = losses.detach().double()
        if self.n == 1:
            self.t += 1
            return losses
        ll = -losses
        if torch.isnan(ll).any():
            raise ValueError("non-finite log-likelihood")  # the original raises too
        logw = self.logw + ll
        pi = 1.0 / (self.t + 1)
        log_pool = math.log(pi) + torch.logsumexp(logw[0], 0)
        row0 = torch.logaddexp(logw[0] + math.log(1 - pi), math.log(self.theta / self.n) + log_pool)
        row1 = torch.logaddexp(logw[1], math.log((1 - self.theta) / self.n) + log_pool)
        logw = torch.stack([row0, row1])
        self.logw = logw - torch.logsumexp(logw.reshape(-1), 0)
        self.logpost = torch.logaddexp(self.logw[0], self.logw[1])
        self.t += 1
        return losses

    def forward(self, outputs):
        if self.task == "regression":
            return torch.stack(list(outputs), -1), self.posterior().to(outputs[0].dtype)
        stacked = torch.stack(list(outputs), -1)
        return torch.logsumexp(stacked + self.logpost.to(stacked.dtype), -1)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class AdaTuneHD:
    """AdaTune's HD rule around the task's own optimizer (SGD with momentum, or Adam), one hyper
    step per training step, before the parameter step (algorithms.md 3.1, 3.2). The parameter
    update is the reference's own (SGDHD's heavy ball; AdamHD's Adam)."""

    def __init__(self, params, kind: str, lr: float, beta: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8, decoupled: bool = False):
        self.params = [p for p in params if p.requires_grad]
        self.kind, self.lr, self.beta = kind, lr, beta
        self.momentum, self.wd, self.betas, self.eps = momentum, weight_decay, betas, eps
        self.decoupled = decoupled  # AdamW (not in AdaTune): w <- w (1 - lr wd) - lr a
        self.d_prev = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype)  # grad_prev
        self.buf: torch.Tensor | None = None
        self.adam: dict[int, dict] = {}
        self.last_h = 0.0  # this step's hypergradient, AdaTune's sign (the LR moves by beta * h)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if self.kind == "sgd":
            self._sgd()
        else:
            self._adam()

    def _grad(self, p) -> torch.Tensor:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        return g + self.wd * p if self.wd and not self.decoupled else g

    def _sgd(self) -> None:
        g = _flat([self._grad(p) for p in self.params])
        self.last_h = float(g @ self.d_prev)
        self.lr += self.beta * self.last_h
        if self.momentum:
            self.buf = g.clone() if self.buf is None else self.buf * self.momentum + g
            d = self.buf
        else:
            d = g
        self.d_prev = d.clone()
        offset = 0
        for p in self.params:
            n = p.numel()
            p.sub_(self.lr * d[offset:offset + n].view_as(p))
            offset += n

    def _adam(self) -> None:
        b1, b2 = self.betas
        self.last_h = 0.0
        for i, p in enumerate(self.params):
            g = self._grad(p)
            st = self.adam.setdefault(i, {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            st["step"] += 1
            t = st["step"]
            if t > 1:  # the moments before this step, the LR moved once per tensor (AdaTune's order)
                h = float((g * (st["m"] / (st["v"].sqrt() + self.eps))).sum())
                h *= math.sqrt(1 - b2 ** (t - 1)) / (1 - b1 ** (t - 1))
                if self.decoupled:
                    h += self.wd * float((g * st["w_prev"]).sum())
                self.lr += self.beta * h
                self.last_h += h
            if self.decoupled:
                st["w_prev"] = p.detach().clone()
                p.mul_(1 - self.lr * self.wd)
            st["m"].mul_(b1).add_(g, alpha=1 - b1)
            st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
            step_size = self.lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p.sub_(step_size * st["m"] / (st["v"].sqrt() + self.eps))


class AdaTuneMarthe:
    """AdaTune's MARTHE loop (algorithms.md 3.3) around the task's torch optimizer: call
    :meth:`backward` with the training loss (instead of ``loss.backward()``), then the
    optimizer's ``step()``, then :meth:`hyper_step` with a validation loss closure."""

    def __init__(self, params, optimizer: torch.optim.Optimizer, kind: str, beta: float, mu: float = -1.0):
        self.params = [p for p in params if p.requires_grad]
        self.opt, self.kind, self.beta = optimizer, kind, beta
        group = optimizer.param_groups[0]
        self.lr = group["lr"]
        self.wd = group.get("weight_decay", 0.0)
        self.decoupled = bool(group.get("decoupled_weight_decay"))  # AdamW: not in AdaTune
        self.adaptive = mu < 0
        self.mu = 0.0 if self.adaptive else mu
        self.c = 0.0
        n, dtype = sum(p.numel() for p in self.params), self.params[0].dtype
        self.Z = torch.zeros(n, dtype=dtype)
        self.S = [torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype)]  # SGD: buffer tangent; Adam: M, V
        self.buf: torch.Tensor | None = None
        self.m = torch.zeros(n, dtype=dtype)
        self.v = torch.zeros(n, dtype=dtype)
        self.t = 0
        self.b = torch.zeros(n, dtype=dtype)
        self.last_h = 0.0  # the last hyper step's hypergradient (the LR moved by -beta * h)

    def backward(self, loss: torch.Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params, create_graph=self.mu > 0)
        g_flat = _flat(grads)
        hz = torch.zeros_like(self.Z)
        if self.mu > 0 and bool(self.Z.any()):
            (g_flat * self.Z).sum().backward()
            hz = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]).detach()
        with torch.no_grad():
            w = _flat([p.detach() for p in self.params])
            coupled = 0.0 if self.decoupled else self.wd
            g = g_flat.detach() + coupled * w
            self._tangent(g.clamp(-ADATUNE_CLIP, ADATUNE_CLIP),
                          (hz + coupled * self.Z).clamp(-ADATUNE_CLIP, ADATUNE_CLIP), w)
            self.b = g
        for p, gr in zip(self.params, grads):
            p.grad = gr.detach().clone()

    def _tangent(self, g: torch.Tensor, dg: torch.Tensor, w: torch.Tensor) -> None:
        lr, mu = self.lr, self.mu
        if self.kind == "sgd":
            m = self.opt.param_groups[0]["momentum"]
            if m:
                self.buf = g.clone() if self.buf is None else self.buf * m + g
                dbuf = dg + m * self.S[0]
                direction, ddir = self.buf, dbuf
                self.S[0] = mu * dbuf
            else:
                direction, ddir = g, dg
        else:
            b1, b2 = self.opt.param_groups[0]["betas"]
            eps = self.opt.param_groups[0]["eps"]
            self.t += 1
            self.m = b1 * self.m + (1 - b1) * g
            self.v = b2 * self.v + (1 - b2) * g * g
            bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
            u = (self.v / bc2).sqrt()
            den = u + eps
            M = b1 * self.S[0] + (1 - b1) * dg
            V = b2 * self.S[1] + 2 * (1 - b2) * g * dg
            direction = (self.m / bc1) / den
            du = torch.where(u > 0, (V / bc2) / (2 * u).clamp_min(1e-30), torch.zeros_like(u))
            ddir = (M / bc1) / den - (self.m / bc1) * du / (den * den)
            self.S = [mu * M, mu * V]
            if self.decoupled:
                direction, ddir = direction + self.wd * w, ddir + self.wd * self.Z
        self.Z = mu * (self.Z - lr * ddir) - direction

    def hyper_step(self, val_loss) -> None:
        loss = val_loss()
        vg = _flat(torch.autograd.grad(loss, self.params, allow_unused=False)).detach()
        vg = vg.clamp(-ADATUNE_CLIP, ADATUNE_CLIP)
        h = self.last_h = float(vg @ self.Z)
        if math.isfinite(h):
            self.lr = self.lr - self.beta * h
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        if self.adaptive:
            dot = float(vg @ self.b)
            z = min(max(self.lr / dot, 0.0), 1.0) if math.isfinite(dot) and dot > 0 else 0.0
            self.c = self.c + self.mu if self.mu > 0 else 0.0
            self.mu = z ** (1.0 / (1.0 + self.c))


# ------------------------------------------------------------------------------ helpers


def optimizer_kind(task: Task) -> str:
    return "sgd" if task.optimizer == "sgd" else "adam"


def val_batches(task: Task, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation split in shuffled batches of VAL_BATCH (cycled by both MARTHEs)."""
    split = task.data()
    order = torch.randperm(len(split.val_x), generator=torch.Generator().manual_seed(20_011 + seed))
    b = min(VAL_BATCH, len(order))
    return [(split.val_x[order[i:i + b]], split.val_y[order[i:i + b]]) for i in range(0, len(order) - b + 1, b)]


def _finish(task: Task, model: nn.Module, diverged: bool, extra: dict) -> dict:
    split = task.data()
    test, val = evaluate(task, model, split.test_x, split.test_y), evaluate(task, model, split.val_x, split.val_y)
    metric, val_metric = metric_of(task, test), metric_of(task, val)
    diverged = bool(diverged) or not math.isfinite(test["loss"])
    if diverged:
        metric = val_metric = 0.0 if task.higher_is_better else math.inf
    return {"metric": metric, "val_metric": val_metric, "test_loss": test["loss"], "test_accuracy": test["accuracy"],
            "diverged": diverged, "collapsed": diverged or collapsed(task, test), **extra}


def _nonfinite(loss: torch.Tensor) -> bool:
    return not math.isfinite(float(loss.detach()))


# ------------------------------------------------------------------------------ grid


def run_grid(task: Task, seed: int, steps: int, lr: float) -> dict:
    model = task.model(seed)
    opt = task.make_optimizer(model, lr)
    batches, diverged = iter(Batches(task, seed)), False
    for step in range(steps):
        xb, yb = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = task.criterion(model(xb), yb)
        loss.backward()
        opt.step()
        if step % 50 == 49 and _nonfinite(loss):
            diverged = True
            break
    return _finish(task, model, diverged, {"lr": lr})


# ------------------------------------------------------------------------------ Alrao


class _AlraoPrediction(nn.Module):
    """What the task's ``evaluate`` needs from an AlraoModel: the mixture's log-probabilities
    (classification) or, for regression, the prediction of the copy with the largest posterior
    (the original's ``sample_best_candidate``; a posterior-weighted mean would let a diverged
    copy's huge outputs through however small its weight)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if self.model.task == "regression":
            stacked, post = out
            return stacked[..., int(post.argmax())]
        return out


def build_alrao(task: Task, seed: int, switch: str):
    """(AlraoModel, optimizer) for the task's model: the last Linear replaced by the copies.
    ``switch``: 'batch' or 'mean' (the product's Switch) or 'original' (:class:`OriginalSwitch`)."""
    from autolrs.optim import (AlraoAdam, AlraoModel, AlraoSGD, L2LossLog, LinearClassifier,
                               LinearRegressor)

    net = task.model(seed)
    if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear):
        last, pre = net[-1], nn.Sequential(*list(net.children())[:-1])
    elif isinstance(getattr(net, "head", None), nn.Linear):
        last, net.head, pre = net.head, nn.Identity(), net
    else:
        raise ValueError(f"{task.name}: no final Linear to replace")
    regression = task.loss == "mse"
    loss = L2LossLog() if regression else nn.NLLLoss()
    factory = LinearRegressor if regression else LinearClassifier
    likelihood = switch if switch in ("batch", "mean") else "mean"
    torch.manual_seed(seed + 1)  # the copies' initial weights: the same for every switch
    model = AlraoModel("regression" if regression else "classification", loss, pre, ALRAO_COPIES, factory,
                       last.in_features, last.out_features, likelihood=likelihood)
    if switch == "original":
        model.switch = OriginalSwitch(ALRAO_COPIES, loss, model.task)
    lo, hi = ALRAO_INTERVAL
    opt = AlraoSGD(model, lo, hi, seed=seed) if task.optimizer == "sgd" else AlraoAdam(model, lo, hi, seed=seed)
    return model, opt


def run_alrao(task: Task, seed: int, steps: int, switch: str) -> dict:
    from autolrs.optim import L2LossAdditional, alrao_step

    model, opt = build_alrao(task, seed, switch)
    regression = task.loss == "mse"
    mixture_loss = L2LossAdditional() if regression else nn.NLLLoss()
    batches, diverged = iter(Batches(task, seed)), False
    try:
        for _ in range(steps):
            xb, yb = next(batches)
            yb = yb.unsqueeze(-1) if regression else yb
            opt.zero_grad(set_to_none=True)
            loss = mixture_loss(model(xb), yb)
            loss.backward()
            alrao_step(model, opt, yb)
    except ValueError:  # non-finite features (the original raises too): the run diverged
        diverged = True
    post = model.switch.posterior().tolist()
    return _finish(task, _AlraoPrediction(model), diverged,
                   {"switch": switch, "posterior": post, "top_copy": max(range(len(post)), key=post.__getitem__)})


# ------------------------------------------------------------------------------ hd / marthe


def run_tuner(task: Task, seed: int, steps: int, method: str, lr: float, config: dict, endpoint: str,
              state_dir: str) -> dict:
    """The product: the tuner through the server, the callback in the loop."""
    from autolrs.callbacks import AutoLRS

    model = task.model(seed)
    opt = task.make_optimizer(model, lr)
    extra = {}
    if method == "marthe":
        extra = {"val_batches": val_batches(task, seed), "val_criterion": task.criterion}
    job = f"parity-{task.name}-{method}-{seed}-{uuid.uuid4().hex[:8]}"
    batches, diverged, lrs = iter(Batches(task, seed)), False, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AutoLRS(model, opt, tuner=method, config=dict(config), server=endpoint, job=job, max_steps=steps,
                     seed=seed, timeout=30.0, **extra) as cb:
            for step in range(steps):
                xb, yb = next(batches)
                opt.zero_grad(set_to_none=True)
                loss = task.criterion(model(xb), yb)
                cb.backward(loss)
                opt.step()
                cb.step(loss)
                lrs.append(cb.lr)
                if step % 10 == 9 and _nonfinite(loss):
                    diverged = True
                    break
                if cb.should_stop:
                    break
    state = _tuner_state(state_dir, job)
    beta = state.get("beta0", state.get("beta"))
    extra_paths = {}
    if method == "marthe":
        mus = [d["summary"].get("mu") for d in _decisions(state_dir, job) if d.get("summary")]
        extra_paths["mu_path"] = mus[::max(1, len(mus) // 20)]
    return _finish(task, model, diverged, {"final_lr": lrs[-1], "max_lr": max(lrs), "beta": beta,
                                           "lr_path": lrs[::max(1, steps // 20)], "tuner_state": state,
                                           **extra_paths})


def _decisions(state_dir: str, job: str) -> list[dict]:
    try:
        lines = (Path(state_dir) / "jobs" / job / "decisions.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _tuner_state(state_dir: str, job: str) -> dict:
    try:
        return json.loads((Path(state_dir) / "jobs" / job / "state.json").read_text()).get("tuner_state") or {}
    except (OSError, ValueError):
        return {}


def run_reference(task: Task, seed: int, steps: int, method: str, lr: float, beta: float, mu: float = -1.0) -> dict:
    """The AdaTune rule in process, one hyper step per training step (``mu``: MARTHE's, negative
    for adaptive)."""
    model = task.model(seed)
    kind = optimizer_kind(task)
    batches, diverged, lrs = iter(Batches(task, seed)), False, []
    if method == "hd":
        opt = task.make_optimizer(model, lr)  # for its hyper-parameters only
        group = opt.param_groups[0]
        hd = AdaTuneHD(model.parameters(), kind, lr, beta, weight_decay=group.get("weight_decay", 0.0),
                       decoupled=bool(group.get("decoupled_weight_decay")))
        for step in range(steps):
            xb, yb = next(batches)
            hd.zero_grad()
            loss = task.criterion(model(xb), yb)
            loss.backward()
            hd.step()
            lrs.append(hd.lr)
            if step % 10 == 9 and (_nonfinite(loss) or not math.isfinite(hd.lr)):
                diverged = True
                break
    else:
        opt = task.make_optimizer(model, lr)
        marthe = AdaTuneMarthe(model.parameters(), opt, kind, beta, mu)
        vb = val_batches(task, seed)
        state = {"i": 0}

        def val_loss():
            x, y = vb[state["i"] % len(vb)]
            state["i"] += 1
            model.eval()
            try:
                return task.criterion(model(x), y)
            finally:
                model.train()

        mus = []
        for step in range(steps):
            xb, yb = next(batches)
            opt.zero_grad(set_to_none=True)
            loss = task.criterion(model(xb), yb)
            marthe.backward(loss)
            opt.step()
            marthe.hyper_step(val_loss)
            lrs.append(marthe.lr)
            mus.append(marthe.mu)
            if step % 10 == 9 and (_nonfinite(loss) or not math.isfinite(marthe.lr)):
                diverged = True
                break
    extra = {"mu_path": mus[::max(1, steps // 20)]} if method == "marthe" else {}
    return _finish(task, model, diverged, {"final_lr": lrs[-1], "max_lr": max(lrs), "min_lr": min(lrs),
                                           "beta": beta, "lr_path": lrs[::max(1, steps // 20)], **extra})


def run_pair(task: Task, seed: int, steps: int, method: str, lr: float, config: dict, endpoint: str,
             state_dir: str, reference: bool = True) -> dict:
    # The math attention kernel: the fused CPU one has no double backward (MARTHE's Hessian term).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        ours = run_tuner(task, seed, steps, method, lr, config, endpoint, state_dir)
        ref = run_reference(task, seed, steps, method, lr, ours["beta"], float(config.get("mu", -1.0))) \
            if reference and ours["beta"] is not None else None
    return {"ours": ours, "reference": ref}


# ------------------------------------------------------------------------------ the pool


_WORKER: dict = {}


def _init_worker(endpoint: str, state_dir: str) -> None:
    torch.set_num_threads(1)
    _WORKER.update(endpoint=endpoint, state_dir=state_dir)


def _execute(job: dict) -> dict:
    task = TASKS[job["task"]]
    started = time.time()
    try:
        if job["kind"] == "grid":
            out = run_grid(task, job["seed"], job["steps"], job["lr"])
        elif job["kind"] == "alrao":
            out = run_alrao(task, job["seed"], job["steps"], job["switch"])
        else:
            out = run_pair(task, job["seed"], job["steps"], job["kind"], job["lr"], job["config"],
                           _WORKER["endpoint"], _WORKER["state_dir"], reference=job.get("with_reference", True))
    except Exception as exc:  # noqa: BLE001 - one failed run is reported, the benchmark goes on
        out = {"error": f"{type(exc).__name__}: {exc}"}
    return {**job, **out, "wall_s": round(time.time() - started, 2)}


def run_jobs(jobs: list[dict], workers: int, endpoint: str, state_dir: str) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    out, started = [], time.time()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(endpoint, state_dir)) as pool:
        for i, row in enumerate(pool.imap_unordered(_execute, jobs), 1):
            out.append(row)
            if i % 10 == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} runs ({time.time() - started:.0f}s)", flush=True)
    return out


_COST = {"cifar_cnn": 8.0, "digits_cnn": 2.0, "digits_gru": 2.0, "digits_attention": 2.5}


def _order(jobs: list[dict]) -> list[dict]:
    weight = {"grid": 1.0, "alrao": 2.5, "hd": 2.2, "marthe": 9.0}
    return sorted(jobs, key=lambda j: -weight[j["kind"]] * _COST.get(j["task"], 0.4) * j["steps"])


# ------------------------------------------------------------------------------ analysis


def _median(xs):
    return statistics.median(xs) if xs else None


def _values(task: Task, rows: list[dict], key: str = "metric") -> list[float]:
    bad = 0.0 if task.higher_is_better else math.inf
    return [r[key] if r.get(key) is not None and math.isfinite(r[key]) else bad for r in rows]


def _worst(task: Task, xs: list[float]):
    if not xs:
        return None
    return min(xs) if task.higher_is_better else max(xs)


def gap(task: Task, value, reference) -> float | None:
    """How far ``value`` is behind ``reference``: accuracy points, or percent of the loss
    (negative: better)."""
    if value is None or reference is None:
        return None
    if task.higher_is_better:
        return 100.0 * (reference - value)
    if not math.isfinite(value):
        return math.inf
    return 100.0 * (value - reference) / abs(reference)


def analyse(rows: list[dict], args) -> dict:
    out: dict = {}
    for name in args.tasks:
        task = TASKS[name]
        entry: dict = {"optimizer": task.optimizer, "metric": task.metric, "steps": task.steps(args.budget)}
        grid = [r for r in rows if r["task"] == name and r["kind"] == "grid" and "error" not in r]
        by_lr: dict[float, list[dict]] = {}
        for r in grid:
            by_lr.setdefault(r["lr"], []).append(r)
        med = {lr: _median(_values(task, rs)) for lr, rs in by_lr.items()}
        if med:
            pick = max if task.higher_is_better else min
            best = pick(med, key=med.get)
            entry["grid"] = {f"{lr:g}": m for lr, m in sorted(med.items())}
            entry["grid_best_lr"], entry["grid_best"] = best, med[best]
            entry["start_lr"] = best * START_FACTOR
        for part in ("alrao",):
            rs = [r for r in rows if r["task"] == name and r["kind"] == "alrao"]
            if not rs:
                continue
            sides = {}
            for label, sw in (("default", args.alrao_switch), ("original", "original")):
                group = [r for r in rs if r["switch"] == sw and "error" not in r]
                vals, vvals = _values(task, group), _values(task, group, "val_metric")
                sides[label] = {"switch": sw, "median": _median(vals), "worst": _worst(task, vals),
                                "val_median": _median(vvals), "n": len(group), "per_seed": vals,
                                "diverged": sum(r["diverged"] for r in group),
                                "collapsed": sum(r["collapsed"] for r in group),
                                "top_copy": [r.get("top_copy") for r in group],
                                "errors": [r["error"] for r in rs if r["switch"] == sw and "error" in r]}
            d, o = sides["default"]["median"], sides["original"]["median"]
            sides["default_minus_original"] = None if d is None or o is None else 0.0 - gap(task, d, o)
            sides["default_at_least_original"] = None if d is None or o is None else (
                d >= o - 1e-12 if task.higher_is_better else d <= o + 1e-12)
            entry["alrao"] = sides
        for method, factor in ((m, f) for m in ("hd", "marthe") for f in args.start_factors):
            rs = [r for r in rows if r["task"] == name and r["kind"] == method and r["start_factor"] == factor]
            if not rs:
                continue
            sides = {"start_factor": factor, "start_lr": rs[0]["lr"]}
            for side in ("ours", "reference"):
                group = [r[side] for r in rs if r.get(side)]
                vals = _values(task, group)
                sides[side] = {"median": _median(vals), "worst": _worst(task, vals), "n": len(group),
                               "per_seed": vals, "gap_to_grid_best": gap(task, _median(vals), entry.get("grid_best")),
                               "worst_gap": gap(task, _worst(task, vals), entry.get("grid_best")),
                               "diverged": sum(bool(g["diverged"]) for g in group),
                               "collapsed": sum(bool(g["collapsed"]) for g in group),
                               "failed": sum(bool(g["diverged"] or g["collapsed"]) for g in group),
                               "final_lr": _median([g["final_lr"] for g in group]),
                               "max_lr": max((g["max_lr"] for g in group), default=None),
                               "beta": _median([g["beta"] for g in group if g.get("beta") is not None])}
            errors = [r["error"] for r in rs if "error" in r]
            sides["errors"] = errors
            o, r_ = sides["ours"]["gap_to_grid_best"], sides["reference"]["gap_to_grid_best"]
            sides["at_least_as_close"] = None if o is None or r_ is None else o <= r_ + 1e-9
            sides["diverges_where_reference_does_not"] = sum(
                bool(r["ours"]["diverged"] or r["ours"]["collapsed"]) and not bool(
                    r["reference"]["diverged"] or r["reference"]["collapsed"])
                for r in rs if r.get("ours") and r.get("reference"))
            entry[method_key(method, factor)] = sides
        out[name] = entry
    return out


def method_key(method: str, factor: float) -> str:
    """``hd`` / ``marthe`` from 10x below the grid best (the parity check), else ``hd x1`` etc."""
    return method if factor == START_FACTOR else f"{method} x{factor:g}"


def _f(x, spec=".4f"):
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def print_report(analysis: dict, factors: list[float]) -> None:
    if any("alrao" in e for e in analysis.values()):
        print_alrao(analysis)
    print_tuners(analysis, factors)


def print_alrao(analysis: dict) -> None:
    print("\nAlrao: default Switch vs the original's (test metric, median / worst over seeds)")
    print(f"  {'task':<18}{'opt':<6}{'metric':<9}{'default':>10}{'worst':>9}{'original':>10}{'worst':>9}"
          f"{'diff':>9}  ok")
    for name, e in analysis.items():
        a = e.get("alrao")
        if not a:
            continue
        print(f"  {name:<18}{e['optimizer']:<6}{e['metric']:<9}{_f(a['default']['median']):>10}"
              f"{_f(a['default']['worst']):>9}{_f(a['original']['median']):>10}{_f(a['original']['worst']):>9}"
              f"{_f(a['default_minus_original'], '+.2f'):>9}  {'yes' if a['default_at_least_original'] else 'NO'}")


def print_tuners(analysis: dict, factors: list[float]) -> None:
    for method, factor in ((m, f) for m in ("hd", "marthe") for f in factors):
        if not any(method_key(method, factor) in e for e in analysis.values()):
            continue
        print(f"\n{method}: from {factor:g}x the grid best, defaults vs the AdaTune rule (same beta); gap of the "
              "median to the grid best (accuracy points or % of the loss), worst seed's gap, final LR (median), "
              "runs that diverged or collapsed")
        print(f"  {'task':<18}{'opt':<6}{'start':>9}{'best':>9}{'grid':>9}{'beta':>10} | {'ours gap':>9}{'worst':>8}"
              f"{'LR':>9}{'div':>4} | {'ref gap':>9}{'worst':>8}{'LR':>9}{'div':>4} | ok")
        for name, e in analysis.items():
            m = e.get(method_key(method, factor))
            if not m:
                continue
            o, r = m["ours"], m["reference"]
            ok = m["at_least_as_close"] and not m["diverges_where_reference_does_not"]
            print(f"  {name:<18}{e['optimizer']:<6}{_f(m['start_lr'], '.2g'):>9}{_f(e.get('grid_best_lr'), '.2g'):>9}"
                  f"{_f(e.get('grid_best')):>9}{_f(o['beta'], '.2g'):>10} | {_f(o['gap_to_grid_best'], '+.2f'):>9}"
                  f"{_f(o['worst_gap'], '+.1f'):>8}{_f(o['final_lr'], '.2g'):>9}{o['failed']:>4} | "
                  f"{_f(r['gap_to_grid_best'], '+.2f'):>9}{_f(r['worst_gap'], '+.1f'):>8}{_f(r['final_lr'], '.2g'):>9}"
                  f"{r['failed']:>4} | {'yes' if ok else 'NO'}")
            for err in m["errors"][:2]:
                print(f"      error: {err[:200]}")


# ------------------------------------------------------------------------------ CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--budget", choices=("short", "long"), default="short")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core)")
    p.add_argument("--quick", action="store_true", help=f"tasks {', '.join(QUICK_TASKS)}, seeds 0 1")
    p.add_argument("--alrao-switch", choices=("batch", "mean"), default=None,
                   help="the product Switch to compare (default: autolrs.optim's default)")
    p.add_argument("--hd-config", type=json.loads, default={}, help="knobs on top of hd's defaults (JSON)")
    p.add_argument("--marthe-config", type=json.loads, default={}, help="knobs on top of marthe's defaults (JSON)")
    p.add_argument("--start-factors", type=float, nargs="+", default=[START_FACTOR],
                   help="hd/marthe start at these multiples of the grid best (default 0.1; e.g. 0.1 1 10 "
                        "to see divergences from a good and a too large start too)")
    p.add_argument("--lr-max-factor", type=float, default=None,
                   help="hd/marthe: lr_max this many times the start LR (default: the tuner's own default)")
    p.add_argument("--no-reference", action="store_true", help="hd/marthe: the product only")
    p.add_argument("--out", default=None, help="JSON path (default bench/out/parity.json, quick: parity_quick.json)")
    p.add_argument("--reprint", metavar="JSON", default=None, help="print the tables of an earlier report and stop")
    p.add_argument("--grid-from", metavar="JSON", default=None,
                   help="take the constant-LR grid from an earlier report (same tasks, seeds, budget)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks or list(QUICK_TASKS)
        args.seeds = args.seeds or [0, 1]
    args.tasks = args.tasks or list(TASKS)
    args.seeds = args.seeds if args.seeds is not None else [0, 1, 2]
    if args.alrao_switch is None:
        from autolrs.optim import Switch
        import inspect
        args.alrao_switch = inspect.signature(Switch).parameters["likelihood"].default
    args.out = Path(args.out or OUT / ("parity_quick.json" if args.quick else "parity.json"))
    return args


def reprint(path: str) -> dict:
    """The tables of an earlier report, analysed again from its rows."""
    report = json.loads(Path(path).read_text())
    c = report["config"]
    args = argparse.Namespace(tasks=c["tasks"], budget=c["budget"], alrao_switch=c["alrao_switch"],
                              start_factors=c.get("start_factors", [START_FACTOR]))
    analysis = analyse(report["rows"], args)
    print_report(analysis, args.start_factors)
    return analysis


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.reprint:
        return reprint(args.reprint)
    torch.set_num_threads(1)
    started = time.time()
    first: list[dict] = []
    for name in args.tasks:
        task = TASKS[name]
        steps = task.steps(args.budget)
        for seed in args.seeds:
            if {"hd", "marthe"} & set(args.parts) and not args.grid_from:
                first += [{"task": name, "kind": "grid", "seed": seed, "steps": steps, "lr": lr} for lr in task.grid]
            if "alrao" in args.parts:
                first += [{"task": name, "kind": "alrao", "seed": seed, "steps": steps, "switch": sw}
                          for sw in (args.alrao_switch, "original")]
    print(f"parity: {len(args.tasks)} tasks, seeds {args.seeds}, {args.budget} budget, parts {args.parts}, "
          f"{args.jobs} at a time; load average {os.getloadavg()[0]:.1f}", flush=True)
    from autolrs.server import ServerProcess

    with tempfile.TemporaryDirectory(prefix="autolrs-parity-") as tmp:
        with ServerProcess(Path(tmp) / "state", log_path=Path(tmp) / "server.log", lifeline=True) as server:
            rows = run_jobs(_order(first), args.jobs, server.endpoint, str(Path(tmp) / "state")) if first else []
            if args.grid_from:
                rows += [r for r in json.loads(Path(args.grid_from).read_text())["rows"]
                         if r["kind"] == "grid" and r["task"] in args.tasks and r["seed"] in args.seeds
                         and r["steps"] == TASKS[r["task"]].steps(args.budget)]
            best = {name: e.get("grid_best_lr") for name, e in analyse(rows, args).items()}
            second = []
            for name in args.tasks:
                task = TASKS[name]
                for method, factor in ((m, f) for m in ("hd", "marthe") for f in args.start_factors):
                    if method not in args.parts or best.get(name) is None:
                        continue
                    lr = best[name] * factor
                    config = dict(args.hd_config if method == "hd" else args.marthe_config)
                    if args.lr_max_factor is not None:
                        config["lr_max"] = args.lr_max_factor * lr
                    second += [{"task": name, "kind": method, "seed": seed, "steps": task.steps(args.budget),
                                "lr": lr, "start_factor": factor, "config": config,
                                "with_reference": not args.no_reference} for seed in args.seeds]
            if second:
                rows += run_jobs(_order(second), args.jobs, server.endpoint, str(Path(tmp) / "state"))
    write_report(args.out, {"benchmark": "parity", "partial": True, "rows": rows})  # kept if analysis fails
    analysis = analyse(rows, args)
    print_report(analysis, args.start_factors)
    wall = time.time() - started
    print(f"\nwall time {wall:.0f}s; load average at the end {os.getloadavg()[0]:.1f}")
    report = {
        "benchmark": "parity",
        "config": {"tasks": args.tasks, "parts": args.parts, "seeds": args.seeds, "budget": args.budget,
                   "alrao_switch": args.alrao_switch, "alrao_interval": ALRAO_INTERVAL, "alrao_copies": ALRAO_COPIES,
                   "hd_config": args.hd_config, "marthe_config": args.marthe_config, "quick": args.quick,
                   "start_factors": args.start_factors, "lr_max_factor": args.lr_max_factor,
                   "grid_from": args.grid_from,
                   "threads_per_run": 1, "jobs": args.jobs},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu_count": os.cpu_count(), "load_average_end": os.getloadavg()},
        "analysis": analysis,
        "rows": rows,
        "wall_time_s": round(wall, 1),
    }
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
