"""The hypergradients the client computes against finite differences of the loss with respect
to the LR, on a float64 MLP trained on scikit-learn's digits (two param groups, ratio 0.5)."""

import math

import pytest
import torch

from hypergrad_testlib import (batches, clone, engine, fd, make_optimizer, model64, reg_loss, set_base_lr,
                               train_step, val_loss_at)

LR = 0.05
SGD_VARIANTS = {
    "plain": {},
    "wd": {"weight_decay": 0.01},
    "momentum": {"momentum": 0.9, "weight_decay": 0.01},
    "dampening": {"momentum": 0.8, "dampening": 0.3},
    "nesterov": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
}
ADAM_VARIANTS = {"adam": {}, "adam_wd": {"weight_decay": 0.01, "betas": (0.8, 0.95)}}
ADAMW_VARIANTS = {"adamw": {"weight_decay": 0.5}}  # large, so the decoupled term matters
VARIANTS = [("sgd", k, v) for k, v in SGD_VARIANTS.items()] + [("adam", k, v) for k, v in ADAM_VARIANTS.items()] \
    + [("adamw", k, v) for k, v in ADAMW_VARIANTS.items()]


def lr_for(kind):
    return LR if kind == "sgd" else 0.003


@pytest.mark.parametrize("kind,label,kw", VARIANTS, ids=[v[1] for v in VARIANTS])
def test_hd_hypergradient_is_the_derivative_of_the_next_training_loss(digits, kind, label, kw):
    lr = lr_for(kind)
    data = batches(digits, 5)
    model = model64()
    opt = make_optimizer(kind, model, lr, **kw)
    eng = engine(model, opt)
    eng.configure({"method": "hd"})
    for b in data[:3]:  # optimizer state (momentum buffers, Adam moments) is not trivial
        train_step(model, opt, b)
    snap = clone(model, opt)
    train_step(model, opt, data[3])
    train_step(model, opt, data[4])  # h of this step: dL(w_4; batch 4)/d lr_3
    report = eng.report()
    h = report["h"]
    assert len(h) == 5 and h[0] == 0.0
    assert report["optimizer"] == ("sgd" if kind == "sgd" else "adam")

    def next_loss(base_lr):
        m, o = clone(*snap)
        set_base_lr(o, base_lr)
        train_step(m, o, data[3])
        return reg_loss(m, o, data[4])

    expected = fd(next_loss, lr)
    assert abs(expected) > 1e-4
    assert h[-1] == pytest.approx(expected, rel=1e-5)
    eng.close()


@pytest.mark.parametrize("kind,label,kw", VARIANTS, ids=[v[1] for v in VARIANTS])
def test_rtho_tangent_is_the_derivative_of_the_validation_loss(digits, kind, label, kw):
    lr, K = lr_for(kind), 6
    data, val = batches(digits, 3 + K), batches(digits, 1, size=200, offset=1500)[0]
    model = model64(1)
    opt = make_optimizer(kind, model, lr, **kw)
    for b in data[:3]:
        train_step(model, opt, b)
    snap = clone(model, opt)
    eng = engine(model, opt, val)
    eng.configure({"method": "tangent", "mu": 1.0})
    for b in data[3:]:
        train_step(model, opt, b, eng.backward)
    h = eng.report()["h"]

    def val_after(base_lr):
        m, o = clone(*snap)
        set_base_lr(o, base_lr)
        for b in data[3:]:
            train_step(m, o, b)
        return val_loss_at(m, val)

    expected = fd(val_after, lr)
    assert abs(expected) > 1e-3
    assert len(h) == 1 and h[0] == pytest.approx(expected, rel=1e-5)
    # Without the Hessian-vector product (first order) the value is measurably off: the test can fail.
    m, o = clone(*snap)
    first = engine(m, o, val)
    first.configure({"method": "tangent", "mu": 1.0})
    for b in data[3:]:
        train_step(m, o, b)  # loss.backward(): no H Z
    assert first.report()["h"][0] != pytest.approx(expected, rel=1e-3)
    eng.close()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_mu_zero_is_hd_on_the_validation_loss(digits, kind):
    """mu = 0: the hypergradient of the validation loss with respect to the last step's LR only."""
    lr = lr_for(kind)
    kw = {"momentum": 0.9, "weight_decay": 0.01} if kind == "sgd" else {"weight_decay": 0.01}
    data, val = batches(digits, 5), batches(digits, 1, size=200, offset=1500)[0]
    model = model64(2)
    opt = make_optimizer(kind, model, lr, **kw)
    eng = engine(model, opt, val)
    eng.configure({"method": "tangent", "mu": 0.0})
    for b in data[:4]:
        train_step(model, opt, b, eng.backward)
    snap = clone(model, opt)
    train_step(model, opt, data[4], eng.backward)
    h = eng.report()["h"][0]

    def val_after_last(base_lr):
        m, o = clone(*snap)
        set_base_lr(o, base_lr)
        train_step(m, o, data[4])
        return val_loss_at(m, val)

    assert h == pytest.approx(fd(val_after_last, lr), rel=1e-5)


def test_unsupported_optimizer_and_missing_validation_are_clear_errors(digits):
    model = model64()
    with pytest.raises(ValueError, match="SGD and torch.optim.Adam"):
        engine(model, torch.optim.RMSprop(model.parameters(), lr=0.01))
    with pytest.raises(ValueError, match="amsgrad"):
        engine(model, torch.optim.Adam(model.parameters(), amsgrad=True))
    eng = engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="validation gradient"):
        eng.configure({"method": "tangent", "mu": 1.0})
    eng.close()


def test_reported_values_are_non_finite_not_an_error(digits):
    """A diverged step reports NaN/inf (the server skips it); the engine itself never raises."""
    data = batches(digits, 3)
    model = model64()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eng = HypergradEngineFor = engine(model, opt)
    eng.configure({"method": "hd"})
    for i, b in enumerate(data):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(b[0]), b[1])
        loss.backward()
        if i == 2:
            for p in model.parameters():
                p.grad.fill_(math.inf)
        opt.step()
    h = eng.report()["h"]
    assert len(h) == 3 and all(math.isfinite(x) for x in h[:2]) and not math.isfinite(h[2])
    del HypergradEngineFor
