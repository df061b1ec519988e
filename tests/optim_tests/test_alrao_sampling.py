"""Alrao's per-unit LR sampling: shapes and sharing as the original defines them, a log-uniform
distribution (Kolmogorov-Smirnov), seeding, and the classifier copies' log-spaced LRs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from autolrs.optim import AlraoModel, AlraoSGD, LinearClassifier, classifier_lrs, sample_unit_lrs
from autolrs.optim.sampling import log_uniform

LO, HI = 1e-5, 10.0


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.lstm = nn.LSTM(5, 6, num_layers=2)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(8, 9)


def sampled(module, seed=0, per="unit"):
    return list(sample_unit_lrs(module, LO, HI, torch.Generator().manual_seed(seed), per=per))


def test_one_lr_tensor_per_parameter_in_parameter_order_broadcastable():
    net = Mixed()
    pairs = sampled(net)
    assert [p for p, _ in pairs] == list(net.parameters())
    for p, lr in pairs:
        assert lr.expand_as(p).shape == p.shape
        assert lr.dtype == torch.float64
        assert (lr >= LO).all() and (lr <= HI).all()


def test_sharing_follows_the_original():
    net = Mixed()
    lrs = {id(p): lr.expand_as(p) for p, lr in sampled(net)}
    lr = lambda p: lrs[id(p)]  # noqa: E731
    # Linear and Conv: one LR per output unit, constant along the unit's inputs, bias shares it.
    for layer in (net.fc, net.conv):
        w = lr(layer.weight).reshape(layer.weight.shape[0], -1)
        assert (w == w[:, :1]).all()
        assert torch.equal(lr(layer.bias), w[:, 0])
        assert len(set(w[:, 0].tolist())) == layer.weight.shape[0]
    # Embedding: one LR per column, the same on every row.
    e = lr(net.emb.weight)
    assert (e == e[:1]).all() and len(set(e[0].tolist())) == 5
    # LSTM: one LR per gate row (4 * hidden), ih and hh sampled independently, biases share them.
    for k in range(2):
        ih, hh = lr(getattr(net.lstm, f"weight_ih_l{k}")), lr(getattr(net.lstm, f"weight_hh_l{k}"))
        assert ih.shape[0] == 24 and (ih == ih[:, :1]).all() and (hh == hh[:, :1]).all()
        assert not torch.equal(ih[:, 0], hh[:, 0])
        assert torch.equal(lr(getattr(net.lstm, f"bias_ih_l{k}")), ih[:, 0])
        assert torch.equal(lr(getattr(net.lstm, f"bias_hh_l{k}")), hh[:, 0])
    # Anything else: one LR per scalar.
    assert len(set(lr(net.bn.weight).tolist())) == 4


def test_per_weight_mode_gives_every_scalar_its_own_lr():
    net = nn.Linear(6, 5)
    for p, lr in sampled(net, per="weight"):
        assert lr.shape == p.shape and len(set(lr.flatten().tolist())) == p.numel()


def test_shared_parameters_are_sampled_once():
    fc = nn.Linear(4, 4)
    net = nn.Sequential(fc, nn.ReLU(), fc)
    assert len(sampled(net)) == 2


def test_log_lrs_are_uniform_kolmogorov_smirnov():
    # 4000 output units: the per-unit LRs of one layer are i.i.d. log-uniform on [LO, HI].
    (_, w), _ = sampled(nn.Linear(3, 4000), seed=123)
    u = (np.log(w.flatten().numpy()) - math.log(LO)) / (math.log(HI) - math.log(LO))
    assert stats.kstest(u, "uniform").pvalue > 0.01
    # The test has power: the LRs themselves (not their logs) are far from uniform.
    v = (w.flatten().numpy() - LO) / (HI - LO)
    assert stats.kstest(v, "uniform").pvalue < 1e-6


def test_seeded():
    a, b, c = (torch.cat([lr.flatten() for _, lr in sampled(Mixed(), seed=s)]) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_interval_is_checked():
    g = torch.Generator().manual_seed(0)
    for lo, hi in ((0.0, 1.0), (1.0, 0.1), (1e-3, math.inf)):
        with pytest.raises(ValueError):
            log_uniform(3, lo, hi, g)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_classifier_lrs_log_spaced_with_both_ends(n):
    lrs = classifier_lrs(n, LO, HI)
    assert len(lrs) == n and lrs[0] == LO and lrs[-1] == HI
    steps = np.diff(np.log(lrs))
    assert np.allclose(steps, (math.log(HI) - math.log(LO)) / (n - 1), rtol=1e-12)


def test_single_classifier_gets_lr_min():
    assert classifier_lrs(1, LO, HI) == [LO]


def test_optimizer_groups_carry_the_classifier_lrs_and_unit_lrs():
    torch.manual_seed(0)
    model = AlraoModel("classification", nn.NLLLoss(), nn.Sequential(nn.Linear(8, 16), nn.ReLU()), 4,
                       LinearClassifier, 16, 3)
    opt = AlraoSGD(model, LO, HI, seed=3)
    assert opt.classifier_lrs() == classifier_lrs(4, LO, HI)
    assert opt.param_groups[0]["lr"] == 1.0
    assert [lr.shape for lr in opt.unit_lrs()] == [(16, 1), (16,)]
    assert [lr.shape for lr in opt.unit_lrs(expand=True)] == [(16, 8), (16,)]
    expected = [lr for _, lr in sample_unit_lrs(model.preclassifier, LO, HI, torch.Generator().manual_seed(3))]
    assert all(torch.equal(a, b.float()) for a, b in zip(opt.unit_lrs(), expected))
