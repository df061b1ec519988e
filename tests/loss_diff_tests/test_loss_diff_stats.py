"""autolrs.delta_stats: the grid, the per-LR statistics against a direct numpy/scipy
computation, and each best-LR rule on scripted deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from autolrs import delta_stats as ds

LRS = [0.001, 0.01, 0.1, 1.0]


def test_grid_log_and_linear_include_both_ends():
    log = ds.lr_grid(1e-4, 1.0, 5)
    assert log[0] == 1e-4 and log[-1] == 1.0
    assert np.allclose(np.diff(np.log10(log)), 1.0)
    lin = ds.lr_grid(1e-8, 1.0, 9, "linear")
    assert lin[0] == 1e-8 and lin[-1] == 1.0 and np.allclose(np.diff(lin), lin[2] - lin[1])
    assert ds.lr_grid(0.1, 0.1, 1) == [0.1]
    for bad in [(0.0, 1.0, 3, "log"), (1.0, 0.1, 3, "log"), (0.1, 0.1, 3, "log"), (0.1, 1.0, 0, "log"),
                (0.1, 1.0, 3, "cubic")]:
        with pytest.raises(ValueError):
            ds.lr_grid(*bad)


def test_delta_marks_divergence_and_undefined_starts():
    assert ds.delta(2.0, 1.5) == -0.5
    assert ds.delta(2.0, math.nan) == math.inf and ds.delta(2.0, math.inf) == math.inf
    assert math.isnan(ds.delta(math.nan, 1.0)) and math.isnan(ds.delta(math.inf, math.inf))


def test_statistics_match_numpy_and_scipy():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(17, 6)) * np.array([0.1, 1, 2, 3, 4, 5]) - 1
    s = ds.statistics(d, alpha=0.1)
    assert np.allclose(s["mean"], d.mean(0))
    assert np.allclose(s["median"], np.median(d, 0))
    assert np.allclose(s["std"], d.std(0, ddof=1))
    low, high = scipy_stats.t.interval(0.9, 16, loc=d.mean(0), scale=scipy_stats.sem(d, axis=0))
    assert np.allclose(s["ci_low"], low) and np.allclose(s["ci_high"], high)
    assert s["n"] == [17] * 6


def test_statistics_edge_cases():
    one = ds.statistics([[1.0, -2.0]])
    assert one["mean"] == [1.0, -2.0] and all(math.isnan(x) for x in one["std"] + one["ci_low"])
    flat = ds.statistics([[0.5, 1.0], [0.5, 3.0]])
    assert flat["ci_low"][0] == flat["ci_high"][0] == 0.5  # no spread: the interval is a point
    diverged = ds.statistics([[math.inf, -1.0], [1.0, -2.0]])
    assert diverged["mean"][0] == math.inf and math.isnan(diverged["std"][0])
    with pytest.raises(ValueError, match="alpha"):
        ds.statistics([[1.0]], alpha=1.5)


# Scripted so that every rule has a different answer:
#   LR 0.001: tiny, steady falls        -> smallest spread ("variance")
#   LR 0.01:  every subsample falls     -> the largest LR with no rise ("max")
#   LR 0.1:   one huge fall, else rises -> lowest mean ("mean")
#   LR 1.0:   mostly big falls, one huge rise -> lowest median ("median")
SCRIPTED = np.array([
    [-0.010, -0.20, -5.00, -1.00],
    [-0.011, -0.30, +0.10, -1.10],
    [-0.012, -0.25, +0.10, -0.90],
    [-0.011, -0.20, +0.20, +9.00],
])


@pytest.mark.parametrize("method,expected", [("mean", 0.1), ("median", 1.0), ("variance", 0.001), ("max", 0.01)])
def test_each_rule_picks_what_its_definition_says(method, expected):
    result = ds.best_lr(LRS, SCRIPTED, method)
    assert result["lr"] == expected and result["reason"] is None
    i = LRS.index(expected)
    value = {"mean": SCRIPTED[:, i].mean(), "median": np.median(SCRIPTED[:, i]),
             "variance": SCRIPTED[:, i].std(ddof=1), "max": SCRIPTED[:, i].max()}[method]
    assert result["value"] == pytest.approx(value)


def test_max_is_none_when_every_lr_rises_somewhere():
    d = np.array([[-1.0, -1.0], [0.5, 1e-9]])
    result = ds.best_lr([0.1, 1.0], d, "max")
    assert result["lr"] is None and "positive" in result["reason"]
    with pytest.warns(UserWarning, match="positive"):
        assert ds.warn_if_none(result, "max") is None


def test_non_finite_statistics_never_win():
    d = np.array([[-1.0, -9.0, math.nan], [-1.0, math.inf, -20.0]])
    lrs = [0.1, 1.0, 10.0]
    assert ds.best_lr(lrs, d, "mean")["lr"] == 0.1  # inf and NaN means are out
    assert ds.best_lr(lrs, d, "max")["lr"] == 0.1  # inf > 0 and NaN <= 0 is False
    assert ds.best_lr([1.0], [[math.nan], [math.nan]], "mean")["lr"] is None


def test_ties_go_to_the_smallest_lr_and_bad_input_is_clear():
    assert ds.best_lr(LRS, np.full((3, 4), -1.0), "mean")["lr"] == 0.001
    with pytest.raises(ValueError, match="method"):
        ds.best_lr(LRS, SCRIPTED, "mode")
    with pytest.raises(ValueError, match="columns"):
        ds.best_lr(LRS[:3], SCRIPTED, "mean")
    assert ds.best_lr(LRS, np.zeros((0, 4)), "mean")["lr"] is None
    assert ds.best_lr(LRS, SCRIPTED[:1], "variance")["lr"] is None
