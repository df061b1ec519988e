"""The reference implementations of bench/parity.py (the original rules, written from the
published algorithms) against the product where the two define the same thing: the original's
Switch is ``likelihood='mean'``, AdaTune's HD hypergradient is the callback's ``hd`` one with the
sign flipped, AdaTune's MARTHE tangent with a fixed mu is the callback's ``tangent``. Agreement
here is what makes the benchmark's comparison one of rules, not of implementations."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autolrs.callbacks.hypergrad import HypergradEngine
from autolrs.optim import Switch
from autolrs.testing.training import make_mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from parity import AdaTuneHD, AdaTuneMarthe, OriginalSwitch  # noqa: E402


def batches(digits, n, size=48, offset=0):
    x, y = digits
    return [(x[offset + i * size: offset + (i + 1) * size].double(), y[offset + i * size: offset + (i + 1) * size])
            for i in range(n)]


def test_original_switch_is_the_mean_likelihood_switch():
    g = torch.Generator().manual_seed(0)
    ours, original = Switch(5), OriginalSwitch(5, F.nll_loss)
    for _ in range(30):
        outputs = [F.log_softmax(torch.randn(16, 4, generator=g) * (1 + k), -1) for k in range(5)]
        y = torch.randint(0, 4, (16,), generator=g)
        ours.update(outputs, y)
        original.update(outputs, y)
        torch.testing.assert_close(ours.logposterior, original.logpost)
    torch.testing.assert_close(ours(outputs), original(outputs))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_adatune_hd_is_the_callbacks_hd_with_the_sign_flipped(digits, kind):
    data = batches(digits, 6)
    torch.manual_seed(0)
    model = make_mlp(0, hidden=16).double()
    ref_model = copy.deepcopy(model)
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
        ref = AdaTuneHD(ref_model.parameters(), "sgd", 0.05, beta=0.0, momentum=0.9, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.003, eps=1e-12)
        ref = AdaTuneHD(ref_model.parameters(), "adam", 0.003, beta=0.0, eps=1e-12)
    eng = HypergradEngine(model, opt, lambda: [1.0], None, lambda key, msg: None)
    eng.configure({"method": "hd"})
    ref_h = []
    for x, y in data:
        for net, step in ((model, opt), (ref_model, ref)):
            step.zero_grad()
            F.cross_entropy(net(x), y).backward()
            step.step()
        ref_h.append(ref.last_h)
    ours = eng.report()["h"]
    assert ours[0] == 0.0 and ref_h[0] == 0.0
    assert ours[1:] == pytest.approx([-h for h in ref_h[1:]], rel=1e-6 if kind == "sgd" else 1e-4)
    # The reference's own update: torch's heavy ball; AdamHD's Adam with eps outside the bias
    # correction (so close, not equal, to torch's).
    tol = {"rtol": 1e-6, "atol": 1e-9} if kind == "sgd" else {"rtol": 1e-4, "atol": 1e-6}
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **tol)
    eng.close()


@pytest.mark.parametrize("kind,kw", [("sgd", {"momentum": 0.9, "weight_decay": 0.01}), ("sgd", {}),
                                     ("adam", {"weight_decay": 0.01}), ("adamw", {"weight_decay": 0.5})])
def test_adatune_marthe_tangent_is_the_callbacks(digits, kind, kw):
    """mu fixed at 1 (RTHO) and beta 0: after K steps both give grad E_val . dw/dlr."""
    data, val = batches(digits, 5), batches(digits, 1, size=200, offset=1500)[0]
    model = make_mlp(1, hidden=16).double()
    ref_model = copy.deepcopy(model)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    lr = 0.05 if kind == "sgd" else 0.003
    opt, ref_opt = cls(model.parameters(), lr=lr, **kw), cls(ref_model.parameters(), lr=lr, **kw)
    eng = HypergradEngine(model, opt, lambda: [1.0], lambda: F.cross_entropy(model(val[0]), val[1]),
                          lambda key, msg: None)
    eng.configure({"method": "tangent", "mu": 1.0})
    ref = AdaTuneMarthe(ref_model.parameters(), ref_opt, "adam" if kind != "sgd" else "sgd", beta=0.0, mu=1.0)
    for x, y in data:
        opt.zero_grad()
        eng.backward(F.cross_entropy(model(x), y))
        opt.step()
        ref_opt.zero_grad()
        ref.backward(F.cross_entropy(ref_model(x), y))
        ref_opt.step()
        ref.hyper_step(lambda: F.cross_entropy(ref_model(val[0]), val[1]))
    h = eng.report()["h"]
    assert len(h) == 1 and abs(h[0]) > 1e-3
    assert h[0] == pytest.approx(ref.last_h, rel=1e-6)
    eng.close()
