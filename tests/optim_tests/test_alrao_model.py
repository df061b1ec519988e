"""AlraoModel + AlraoSGD/AlraoAdam: exact save/load, real training on scikit-learn digits, the
reduction to torch's optimizers when the interval is one point, the Alrao step's gradient
routing, method forwarding, regression, and the char-LSTM example."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autolrs.optim import (AlraoAdam, AlraoModel, AlraoSGD, L2LossAdditional, L2LossLog, LinearClassifier,
                           LinearRegressor, alrao_step)

ROOT = Path(__file__).resolve().parents[2]


def make(seed=0, n=5, opt_cls=AlraoSGD, lr_min=1e-3, lr_max=10.0, **opt_kwargs):
    torch.manual_seed(seed)
    pre = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    model = AlraoModel("classification", nn.NLLLoss(), pre, n, LinearClassifier, 32, 10)
    return model, opt_cls(model, lr_min, lr_max, seed=seed, **opt_kwargs)


def train(model, opt, x, y, steps, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        opt.zero_grad()
        F.nll_loss(model(x[idx]), y[idx]).backward()
        alrao_step(model, opt, y[idx])


@torch.no_grad()
def full_loss(model, x, y):
    model.eval()
    try:
        return F.nll_loss(model(x), y).item()
    finally:
        model.train()


@pytest.mark.parametrize("opt_cls,kwargs", [(AlraoSGD, {}), (AlraoSGD, {"momentum": 0.9, "momentum_style": "alrao"}),
                                            (AlraoAdam, {})])
def test_training_on_digits_reduces_the_loss(digits, opt_cls, kwargs):
    x, y = digits
    lr_max = 1.0 if opt_cls is AlraoAdam else 10.0
    model, opt = make(opt_cls=opt_cls, lr_max=lr_max, **kwargs)
    before = full_loss(model, x, y)
    train(model, opt, x, y, 150)
    after = full_loss(model, x, y)
    assert after < 0.6 * before, (before, after)
    post = model.posterior()
    assert abs(post.sum().item() - 1) < 1e-9 and post.max() > 0.5


def test_saved_and_loaded_model_predicts_the_same_bitwise(digits):
    x, y = digits
    model, opt = make(seed=0)
    train(model, opt, x, y, 20)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)

    other, other_opt = make(seed=1)  # different weights and different sampled LRs
    assert not all(torch.equal(a, b) for a, b in zip(opt.unit_lrs(), other_opt.unit_lrs()))
    other.load_state_dict(saved["model"])
    other_opt.load_state_dict(saved["optimizer"])
    assert all(torch.equal(a, b) for a, b in zip(opt.unit_lrs(), other_opt.unit_lrs()))
    assert torch.equal(model.switch.logposterior, other.switch.logposterior)
    assert int(model.switch.t) == int(other.switch.t) == 21
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    model.train(), other.train()
    # And training goes on identically.
    train(model, opt, x, y, 3, seed=5)
    train(other, other_opt, x, y, 3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert torch.equal(model.switch.logw, other.switch.logw)


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.9, False, 1e-3), (0.9, True, 0.0)])
def test_one_point_interval_is_torch_sgd(momentum, nesterov, weight_decay):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    ours = AlraoSGD(a, 0.05, 0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    _run_same(a, b, ours, ref)


def test_one_point_interval_is_torch_adam():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    _run_same(a, b, AlraoAdam(a, 0.01, 0.01, weight_decay=1e-3), torch.optim.Adam(b.parameters(), lr=0.01, weight_decay=1e-3))


def _run_same(a, b, opt_a, opt_b):
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        x, t = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.mse_loss(net(x), t).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_unit_lrs_scale_each_units_update():
    torch.manual_seed(0)
    net = nn.Linear(4, 6)
    opt = AlraoSGD(net, 1e-3, 1.0, seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(3, 4)).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    for p, b, g, lr in zip(net.parameters(), before, grads, opt.unit_lrs()):
        torch.testing.assert_close(p.detach(), b - lr * g)
    # group["lr"] is a multiplier on top of the unit LRs (what schedulers and the callback scale).
    opt.param_groups[0]["lr"] = 0.5
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    for p, b, g, lr in zip(net.parameters(), before, grads, opt.unit_lrs()):
        torch.testing.assert_close(p.detach(), b - 0.5 * lr * g)


@pytest.mark.parametrize("opt_cls", [AlraoSGD, AlraoAdam])
def test_added_param_group_without_lr_gets_unit_lrs_and_steps(opt_cls):
    """torch's add_param_group contract: a group naming no lr gets the defaults; for Alrao that is
    a multiplier of 1 on a random LR per unit (index of the first dimension) in [lr_min, lr_max]."""
    torch.manual_seed(0)
    net, extra = nn.Linear(4, 6), nn.Linear(6, 3)
    opt = opt_cls(net, 1e-3, 1.0, seed=0, momentum=0.9) if opt_cls is AlraoSGD else opt_cls(net, 1e-3, 1.0, seed=0)
    opt.add_param_group({"params": extra.parameters()})
    group = opt.param_groups[-1]
    assert group["lr"] == 1.0 and group["role"] == "group_1"
    assert group["momentum" if opt_cls is AlraoSGD else "betas"] == opt.defaults["momentum" if opt_cls is AlraoSGD else "betas"]
    lrs = [opt.state[p]["unit_lr"] for p in extra.parameters()]
    assert [lr.shape for lr in lrs] == [(3, 1), (3,)]
    assert all(((lr >= 1e-3) & (lr <= 1.0)).all() for lr in lrs)
    before = [p.detach().clone() for p in extra.parameters()]
    for _ in range(2):
        opt.zero_grad()
        extra(net(torch.randn(5, 4))).square().sum().backward()
        opt.step()  # the original failed here with KeyError: 'lr'
    assert all(not torch.equal(b, p) for b, p in zip(before, extra.parameters()))
    if opt_cls is AlraoSGD:  # first SGD step of a fresh buffer: exactly the unit LRs times the gradient
        torch.manual_seed(1)
        net2, extra2 = nn.Linear(4, 6), nn.Linear(6, 3)
        opt2 = AlraoSGD(net2, 1e-3, 1.0, seed=0)
        opt2.add_param_group({"params": list(extra2.parameters())})
        opt2.zero_grad()
        extra2(net2(torch.randn(5, 4))).square().sum().backward()
        w0, g0 = extra2.weight.detach().clone(), extra2.weight.grad.clone()
        opt2.step()
        torch.testing.assert_close(extra2.weight.detach(), w0 - opt2.state[extra2.weight]["unit_lr"] * g0)
    # Repeatable from the seed, and saved with the optimizer's state.
    other = AlraoSGD(nn.Linear(4, 6), 1e-3, 1.0, seed=0)
    other_extra = nn.Linear(6, 3)
    other.add_param_group({"params": other_extra.parameters()})
    assert torch.equal(other.state[other_extra.weight]["unit_lr"], lrs[0])
    state = opt.state_dict()
    assert torch.equal(state["state"][2]["unit_lr"], lrs[0])


def test_added_param_group_with_lr_is_plain_and_a_bad_lr_is_refused_at_add_time():
    torch.manual_seed(0)
    net, extra = nn.Linear(4, 6), nn.Linear(6, 3)
    opt = AlraoSGD(net, 1e-3, 1.0, seed=0)
    opt.add_param_group({"params": [extra.weight], "lr": 0.05})
    assert "unit_lr" not in opt.state[extra.weight] and opt.param_groups[-1]["lr"] == 0.05
    opt.zero_grad()
    extra(net(torch.randn(5, 4))).sum().backward()
    w0, g0 = extra.weight.detach().clone(), extra.weight.grad.clone()
    opt.step()
    torch.testing.assert_close(extra.weight.detach(), w0 - 0.05 * g0)
    for bad in (None, "0.1", -1.0, 0.0, True):
        with pytest.raises(ValueError, match="'lr' must be a number > 0"):
            opt.add_param_group({"params": [extra.bias], "lr": bad})
    assert len(opt.param_groups) == 2  # nothing half-added
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [extra.weight]})


def test_alrao_step_routes_gradients(digits):
    x, y = digits[0][:32], digits[1][:32]
    model, opt = make(n=3)
    opt.zero_grad()
    F.nll_loss(model(x), y).backward()
    mixture_grads = [p.grad.clone() for p in model.preclassifier.parameters()]
    feats = model.last_x
    own = []
    for copy in model.classifiers:  # each copy's gradient of its own loss on the features
        copy.zero_grad()
        F.nll_loss(copy(feats), y).backward()
        own.append([p.grad.clone() for p in copy.parameters()])
    for copy in model.classifiers:
        for p in copy.parameters():
            p.grad = None
    opt.step = lambda closure=None: None  # freeze weights to inspect the gradients
    alrao_step(model, opt, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.preclassifier.parameters(), mixture_grads))
    for copy, grads in zip(model.classifiers, own):
        assert all(torch.allclose(p.grad, g) for p, g in zip(copy.parameters(), grads))


@pytest.mark.parametrize("likelihood", ["mean", "batch"])
def test_alrao_step_updates_the_switch_with_the_prequential_losses(digits, likelihood):
    """alrao_step reuses the copies' own losses for the Switch: the same update as the Switch's
    own from the outputs of the forward pass (before the step), and a copy with a non-finite loss
    is left untrained without poisoning the others."""
    x, y = digits[0][:32], digits[1][:32]
    a, opt_a = make(n=3)
    b, opt_b = make(n=3)
    a.switch.likelihood = b.switch.likelihood = likelihood
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            if model is a:
                losses = alrao_step(model, opt, y)
            else:
                for copy in model.classifiers:
                    for p in copy.parameters():
                        p.grad = None
                torch.stack([F.nll_loss(c(model.last_x), y) for c in model.classifiers]).sum().backward()
                opt.step()
                expected = model.update_switch(y)
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(a.switch.logw, b.switch.logw)
    assert int(a.switch.t) == 4
    with torch.no_grad():
        a.classifiers[1].fc.weight.fill_(math.inf)
    before = [p.detach().clone() for p in a.classifiers[0].parameters()]
    post_before = a.posterior()[1].item()
    opt_a.zero_grad()
    a.check_finite = False
    F.nll_loss(a(x), y).backward()
    alrao_step(a, opt_a, y)
    assert a.classifiers[1].fc.weight.grad is None
    assert all(torch.isfinite(p).all() and not torch.equal(p, q) for p, q in zip(a.classifiers[0].parameters(), before))
    post = a.posterior()
    assert torch.isfinite(post).all() and post[1] < post_before  # it keeps only what switching gives back


def test_tuple_outputs_and_method_forwarding():
    class Pre(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(x), "extra"

        def width(self):
            return 6

    model = AlraoModel("classification", nn.NLLLoss(), Pre(), 2, LinearClassifier, 6, 3)
    out, extra = model(torch.randn(5, 4))
    assert out.shape == (5, 3) and extra == "extra"
    model.method_fwd_preclassifier("width")
    model.method_fwd_classifiers("extra_repr", "copies_repr")
    assert model.width() == 6 and len(model.copies_repr()) == 2
    with pytest.raises(AttributeError):
        model.method_fwd_preclassifier("width")


def test_non_finite_features_raise():
    model = AlraoModel("classification", nn.NLLLoss(), nn.Identity(), 2, LinearClassifier, 3, 2)
    with pytest.raises(ValueError):
        model(torch.tensor([[1.0, float("nan"), 0.0]]))


def test_hard_catch_up_copies_the_posterior_average():
    model, _ = make(n=3)
    for _ in range(20):  # the switch prior keeps giving a lagging copy ~1/(t N) of the mass
        model.switch.update_loglik([-0.1, -100.0, -0.2])
    post = model.posterior()
    expected = sum(post[k].float() * model.classifiers[k].fc.weight for k in range(3))
    assert model.hard_catch_up(threshold=-3.0) == 1
    torch.testing.assert_close(model.classifiers[1].fc.weight, expected)


def test_regression_trains():
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(256, 1)
    model = AlraoModel("regression", L2LossLog(), nn.Sequential(nn.Linear(3, 16), nn.Tanh()), 4, LinearRegressor, 16, 1)
    opt = AlraoSGD(model, 1e-4, 1.0, seed=0)
    mixture_loss = L2LossAdditional()
    losses = []
    for step in range(150):
        idx = torch.randint(0, 256, (32,))
        opt.zero_grad()
        out = model(x[idx])
        assert out[0].shape == (32, 1, 4) and out[1].shape == (4,)
        loss = mixture_loss(out, y[idx])
        loss.backward()
        alrao_step(model, opt, y[idx])
        losses.append(loss.item())
    # The Gaussian NLL (sigma2 = 1) cannot go below 0.5 log(2 pi) = 0.92.
    assert sum(losses[-20:]) / 20 < min(1.0, sum(losses[:20]) / 20 - 0.3)


def test_optim_imports_neither_the_server_nor_zmq():
    code = "import sys, autolrs.optim; print(sorted(m for m in sys.modules if m.split('.')[0] == 'zmq' " \
           "or m.startswith('autolrs.server') or m.startswith('autolrs.callbacks')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_char_lstm_example_runs(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import char_lstm
    finally:
        sys.path.remove(str(ROOT / "examples"))
    summary = char_lstm.main(["--steps", "4", "--out", str(tmp_path), "--bptt", "20", "--hidden", "32",
                              "--batch-size", "8", "--max-chars", "20000", "--log-every", "2", "--threads", "0"])
    assert summary["steps"] == 4 and len(summary["losses"]) == 4
    assert all(v == v for v in summary["losses"]) and summary["val_loss"] > 0
    assert (tmp_path / "summary.json").is_file()
    assert abs(sum(summary["posterior"]) - 1) < 1e-9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_the_same_sampled_lrs_and_trains(digits):
    x, y = digits
    cpu_model, cpu_opt = make(seed=0)
    torch.manual_seed(0)
    pre = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    model = AlraoModel("classification", nn.NLLLoss(), pre, 5, LinearClassifier, 32, 10).cuda()
    opt = AlraoSGD(model, 1e-3, 10.0, seed=0)
    assert all(a.is_cuda and torch.equal(a.cpu(), b) for a, b in zip(opt.unit_lrs(), cpu_opt.unit_lrs()))
    before = full_loss(model, x.cuda(), y.cuda())
    train(model, opt, x.cuda(), y.cuda(), 100)
    assert full_loss(model, x.cuda(), y.cuda()) < 0.8 * before
    assert model.switch.logposterior.is_cuda
