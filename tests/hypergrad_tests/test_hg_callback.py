"""hd, rtho and marthe end to end: a real server process, the callback, real training on
scikit-learn's digits (float64 MLP, two param groups)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from autolrs.callbacks import AutoLRS, AutoLRSConfigError
from autolrs.tuners.hypergradient import HypergradientTuner

from hypergrad_testlib import (RATIOS, batches, clone, fd, make_optimizer, model64, reg_loss, set_base_lr,
                               train_step, val_loss_at)


def decisions(server, job):
    path = server.state_dir / "jobs" / job / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(cb, model, opt, data):
    lrs = []
    for b in data:
        lrs.append(opt.param_groups[0]["lr"])
        loss = train_step(model, opt, b, cb.backward)
        cb.step(loss)
    return lrs


def test_rtho_reports_the_validation_hypergradient_over_the_wire(live_server, digits):
    """beta = 0 keeps the LR fixed, so the segment's hypergradient is dE_val(w_K)/dLR, which a
    finite difference over the same K steps gives independently."""
    server, K, lr = live_server(), 8, 0.05
    data, val = batches(digits, K), batches(digits, 1, size=200, offset=1500)[0]
    model = model64(3)
    opt = make_optimizer("sgd", model, lr, momentum=0.9, weight_decay=0.01)
    snap = clone(model, opt)
    with AutoLRS(model, opt, tuner="rtho", config={"beta": 0.0, "every": K}, server=server.endpoint,
                 job="rtho-fd", val_batches=[val]) as cb:
        run(cb, model, opt, data)
        reported = cb._hypergrad.last_report["h"][0]

    def val_after(base_lr):
        m, o = clone(*snap)
        set_base_lr(o, base_lr)
        for b in data:
            train_step(m, o, b)
        return val_loss_at(m, val)

    assert reported == pytest.approx(fd(val_after, lr), rel=1e-5)
    told = [d["summary"]["last_h"] for d in decisions(server, "rtho-fd") if d["kind"] == "report"]
    assert told[0] == reported  # the server got exactly what the client computed


def test_hd_reports_the_training_hypergradient_of_each_step(live_server, digits):
    server, lr = live_server(), 0.003
    data = batches(digits, 6)
    model = model64(4)
    opt = make_optimizer("adam", model, lr, weight_decay=0.01)
    with AutoLRS(model, opt, tuner="hd", config={"beta": 0.0, "every": 6}, server=server.endpoint,
                 job="hd-fd") as cb:
        for i, b in enumerate(data):
            if i == 4:
                snap = clone(model, opt)
            opt.zero_grad()
            loss = F.cross_entropy(model(b[0]), b[1])
            loss.backward()  # hd needs no cb.backward
            opt.step()
            cb.step(loss)
        h = cb._hypergrad.last_report["h"]

    def next_loss(base_lr):
        m, o = clone(*snap)
        set_base_lr(o, base_lr)
        train_step(m, o, data[4])
        return reg_loss(m, o, data[5])

    assert len(h) == 6
    assert h[-1] == pytest.approx(fd(next_loss, lr), rel=1e-5)


def test_marthe_mu_one_is_rtho_and_mu_zero_is_hd_on_validation(live_server, digits):
    server = live_server()
    data, val = batches(digits, 24), batches(digits, 1, size=200, offset=1500)[0]
    config = {"beta": 0.002, "every": 3}

    def trajectory(tuner, extra):
        model = model64(5)
        opt = make_optimizer("sgd", model, 0.05, momentum=0.5)
        with AutoLRS(model, opt, tuner=tuner, config={**config, **extra}, server=server.endpoint,
                     val_batches=[val]) as cb:
            return run(cb, model, opt, data)

    rtho = trajectory("rtho", {})
    assert rtho == trajectory("marthe", {"mu": 1.0})
    assert len(set(rtho)) > 3  # the LR really moved

    # mu = 0 against HD on the validation loss written out here: after each segment,
    # h = -grad E_val(w) . (w_prev - w) / lr with w_prev the weights before the segment's last step.
    marthe0 = trajectory("marthe", {"mu": 0.0})
    model = model64(5)
    opt = make_optimizer("sgd", model, 0.05, momentum=0.5)
    lr, expected = 0.05, []
    for i, b in enumerate(data):
        expected.append(lr)
        before = [p.detach().clone() for p in model.parameters()]
        train_step(model, opt, b)
        if (i + 1) % config["every"] == 0:
            vloss = F.cross_entropy(model(val[0]), val[1])
            grads = torch.autograd.grad(vloss, list(model.parameters()))
            h = -sum(float((g * (w0 - p.detach())).sum()) for g, w0, p in zip(grads, before, model.parameters())) / lr
            # One hypergradient per segment stands for each of its steps: beta is per step.
            lr = min(max(lr - config["beta"] * config["every"] * h, 0.0), 100 * 0.05)
            set_base_lr(opt, lr)
    assert marthe0 == pytest.approx(expected, rel=1e-6)
    assert marthe0 != pytest.approx(rtho, rel=1e-6)


def test_setups_that_cannot_work_fail_at_construction(live_server, digits):
    server = live_server()
    model = model64()
    with pytest.raises(AutoLRSConfigError, match="validation gradient"):
        AutoLRS(model, torch.optim.SGD(model.parameters(), lr=0.1), tuner="marthe", server=server.endpoint)
    with pytest.raises(AutoLRSConfigError, match="SGD and torch.optim.Adam"):
        AutoLRS(model, torch.optim.RMSprop(model.parameters(), lr=0.01), tuner="hd", server=server.endpoint)
    with pytest.raises(AutoLRSConfigError, match="GradScaler"):
        AutoLRS(model, torch.optim.SGD(model.parameters(), lr=0.1), tuner="rtho", server=server.endpoint,
                val_batches=batches(digits, 1), scaler=torch.amp.GradScaler("cpu"))


def test_adversarial_gradients_keep_the_lr_finite_and_in_bounds(live_server, digits):
    """Gradients scaled by 1e30, flipped, NaN or inf on some steps: the LR the callback sets is
    always finite and within [lr_min, lr_max]; non-finite hypergradients are counted, not applied."""
    server = live_server()
    data = batches(digits, 60)
    model = model64(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    poison = {7: 1e30, 13: -1e30, 19: math.nan, 29: math.inf, 31: -math.inf, 43: 1e300}
    seen = []
    # Without the divergence guard: it would undo the poisoned segments and hd would never see them.
    with AutoLRS(model, opt, tuner="hd", config={"beta": 1.0, "every": 4, "lr_max": 1.0, "guard": False},
                 server=server.endpoint, job="adversarial") as cb:
        for i, b in enumerate(data):
            opt.zero_grad()
            loss = F.cross_entropy(model(b[0]), b[1])
            loss.backward()
            if i in poison:
                for p in model.parameters():
                    p.grad.mul_(poison[i]) if math.isfinite(poison[i]) else p.grad.fill_(poison[i])
            opt.step()
            cb.step(loss)
            seen.append(cb.lr)
            if i in poison:  # start again from sane weights so later steps are adversarial again
                with torch.no_grad():
                    for p, q in zip(model.parameters(), model64(6).parameters()):
                        p.copy_(q)
                opt.state.clear()
    assert all(math.isfinite(lr) and 0.0 <= lr <= 1.0 for lr in seen)
    assert len(set(seen)) > 2
    summary = decisions(server, "adversarial")[-2]["summary"]
    assert summary["skipped"] >= 3


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_the_default_beta_is_the_reported_optimizers(live_server, digits, kind):
    """The callback says which optimizer the hypergradients are of; the server's default beta is
    that optimizer's (Adam's hypergradient has another scale than SGD's)."""
    server = live_server()
    model = model64(3)
    opt = make_optimizer(kind, model, 0.05 if kind == "sgd" else 0.003)
    job = f"beta-{kind}"
    with AutoLRS(model, opt, tuner="hd", config={"every": 4}, server=server.endpoint, job=job) as cb:
        run(cb, model, opt, batches(digits, 12))
    summary = decisions(server, job)[-2]["summary"]
    family = "sgd" if kind == "sgd" else "adam"
    assert summary["optimizer"] == family and summary["beta"] == HypergradientTuner.default_beta[family]
    assert summary["applied"] >= 8
