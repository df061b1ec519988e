"""Range-test curve analysis: sweep formulas, smoothing, divergence, suggestions, AutoLRS bounds."""

import math

import numpy as np
import pytest

from autolrs import lr_curve


def test_exp_and_linear_sweeps_follow_torch_lr_finder_formulas():
    assert lr_curve.sweep_lrs(1e-5, 0.1, 5, "exp") == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 0.1], rel=1e-12)
    assert lr_curve.sweep_lrs(1e-5, 5e-5, 5, "linear") == pytest.approx([1e-5, 2e-5, 3e-5, 4e-5, 5e-5], rel=1e-12)
    n, a, b = 37, 3e-6, 7.5
    # Exactly torch-lr-finder's arithmetic: r = i / (num_iter - 1).
    assert lr_curve.sweep_lrs(a, b, n, "EXP") == [a * (b / a) ** (i / (n - 1)) for i in range(n)]
    assert lr_curve.sweep_lrs(a, b, n, "linear") == [a + (i / (n - 1)) * (b - a) for i in range(n)]


@pytest.mark.parametrize("num_iter", [0, 1])
def test_num_iter_must_exceed_one(num_iter):
    with pytest.raises(ValueError, match="num_iter"):
        lr_curve.sweep_lrs(1e-3, 1, num_iter)


def test_unknown_step_mode():
    with pytest.raises(ValueError, match="expected one of"):
        lr_curve.sweep_lr(0, 1e-3, 1, 10, "cosine")


def test_smoothing_is_an_ema_of_the_previous_smoothed_value():
    raw = [2.0, 1.0, 3.0, 0.5, 0.5]
    f = 0.3
    expected = [2.0]
    for x in raw[1:]:
        expected.append(f * x + (1 - f) * expected[-1])
    assert lr_curve.smooth(raw, f) == expected
    assert lr_curve.smooth(raw, 0.0) == raw


def test_divergence_is_smoothed_loss_above_threshold_times_best():
    s = lr_curve.Smoother(smooth_f=0.0, diverge_th=2.0)
    out = [s.add(x) for x in [3.0, 1.0, 1.5, 2.0, 2.1]]
    assert [d for _, d in out] == [False, False, False, False, True]
    assert s.best == 1.0


def test_first_loss_is_the_first_best_and_non_finite_diverges():
    s = lr_curve.Smoother(0.05, 5.0)
    assert s.add(4.0) == (4.0, False) and s.best == 4.0
    smoothed, diverged = s.add(math.nan)
    assert diverged and math.isnan(smoothed) and s.best == 4.0
    assert lr_curve.Smoother(0.05, None).add(math.inf)[1]
    # No ratio test: a huge but finite loss does not stop the sweep.
    off = lr_curve.Smoother(0.0, None)
    assert [off.add(x)[1] for x in [1.0, 1e9]] == [False, False]


def test_smooth_f_range():
    with pytest.raises(ValueError, match="smooth_f"):
        lr_curve.Smoother(1.0)


@pytest.mark.parametrize("losses, index", [
    ([10, 8, 4, 1, 4, 16], 2),
    ([1, 0, 1, 2, 3, 4], 0),
    ([0, 1, 2, 3, 4, 3], 5),
])
def test_steepest_by_index_matches_torch_lr_finder_cases(losses, index):
    lrs = list(range(len(losses)))
    got = lr_curve.steepest(lrs, losses, skip_start=0, skip_end=0, wrt="index")
    assert got["lr"] == index and got["index"] == index


def _curve(n=60, seed=0):
    rng = np.random.default_rng(seed)
    lrs = np.geomspace(1e-5, 10, n)
    x = np.log10(lrs)
    loss = 2.3 - 1.5 / (1 + np.exp(-(x + 2) * 3)) + np.where(x > -0.5, (x + 0.5) ** 2 * 4, 0)
    return lrs.tolist(), lr_curve.smooth((loss + 0.02 * rng.standard_normal(n)).tolist(), 0.05)


def test_steepest_is_the_min_gradient_wrt_log_lr_after_skips():
    lrs, losses = _curve()
    got = lr_curve.steepest(lrs, losses)  # skip 10 and 5
    lr, loss = np.array(lrs[10:-5]), np.array(losses[10:-5])
    i = int(np.argmin(np.gradient(loss, np.log10(lr))))
    assert got["lr"] == lr[i] and got["index"] == 10 + i and got["loss"] == loss[i]


def _fastai_valley(lrs, losses):
    """fastai's valley, verbatim (pure Python double loop)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


@pytest.mark.parametrize("seed", range(6))
def test_valley_matches_fastai(seed):
    lrs, losses = _curve(n=50 + 13 * seed, seed=seed)
    n = len(lrs)
    expected = _fastai_valley(lrs[n // 10:-5], losses[n // 10:-5])
    assert lr_curve.valley(lrs, losses)["lr"] == expected
    rng = np.random.default_rng(seed)
    noisy = rng.standard_normal(40).tolist()  # many ties between runs: exercises fastai's update order
    assert lr_curve.valley(list(range(40)), noisy, 0, 0)["lr"] == _fastai_valley(list(range(40)), noisy)


def test_minimum_is_lr_at_lowest_loss_over_ten():
    lrs, losses = _curve()
    n = len(lrs)
    part = np.array(losses[n // 10:-5])
    i = n // 10 + int(np.argmin(part))
    got = lr_curve.minimum(lrs, losses)
    assert got["lr"] == lrs[i] / 10 and got["index"] == i


def test_non_finite_points_are_dropped_first():
    lrs, losses = _curve()
    broken = list(losses)
    broken[20] = math.nan
    broken[30] = math.inf
    keep = [i for i in range(len(lrs)) if i not in (20, 30)]
    clean_lrs, clean_losses = [lrs[i] for i in keep], [losses[i] for i in keep]
    for method in lr_curve.METHODS:
        # Explicit skips: the default valley/minimum skip depends on the list's length.
        got = lr_curve.suggest(lrs, broken, method, skip_start=5, skip_end=5)
        ref = lr_curve.suggest(clean_lrs, clean_losses, method, skip_start=5, skip_end=5)
        assert got["lr"] == ref["lr"] and got["lr"] is not None
        assert lrs[got["index"]] == clean_lrs[ref["index"]]


def test_too_short_curve_gives_none_and_a_reason():
    for method in lr_curve.METHODS:
        got = lr_curve.suggest([1e-3, 1e-2, 1e-1], [1.0, 0.5, math.nan], method)
        assert got["lr"] is None and "need at least" in got["reason"], got
    got = lr_curve.steepest(list(range(1, 17)), [1.0] * 16)
    assert got["lr"] is None and "17" in got["reason"]
    with pytest.raises(ValueError, match="unknown suggestion"):
        lr_curve.suggest([1], [1], "fastest")


def test_bounds_rule():
    from scipy.ndimage import median_filter

    lrs = np.geomspace(1e-5, 1, 51).tolist()  # 10 points per decade
    # Flat to 1e-3, falls until 1e-1 (index 40), then rises.
    losses = [2.0 if i <= 20 else (2.0 - (i - 20) * 0.05 if i <= 40 else 1.0 + (i - 40) * 0.3) for i in range(51)]
    lo, hi = lr_curve.bounds_from_curve(lrs, losses)
    # The running median (5 points here) flattens the V's tip: its first lowest point is two earlier.
    smoothed = median_filter(np.array(losses), size=5, mode="nearest")
    assert hi == lrs[int(np.argmin(smoothed))] == lrs[38]
    # 10 % of the fall (0.1) is reached two points after the fall starts (index 22).
    assert lo == lrs[22]
    # A steep, late fall still gets at least one decade.
    late = [2.0 if i <= 37 else (1.0 if i <= 41 else 1.0 + (i - 41) * 0.3) for i in range(51)]
    lo, hi = lr_curve.bounds_from_curve(lrs, late)
    assert hi == lrs[38] and lo == pytest.approx(hi / 10, rel=1e-12)
    assert lr_curve.bounds_from_curve(lrs, late, min_decades=3) == (pytest.approx(hi / 1e3, rel=1e-12), hi)
    # Noise: one lucky low first point and isolated spikes change nothing.
    noisy = list(losses)
    noisy[0], noisy[10], noisy[30] = 1.2, 3.0, 0.5
    assert lr_curve.bounds_from_curve(lrs, noisy) == (lrs[22], lrs[38])
    with pytest.raises(ValueError, match="never fell"):
        lr_curve.bounds_from_curve(lrs, [1.0 + i for i in range(51)])
    with pytest.raises(ValueError, match="at least 3"):
        lr_curve.bounds_from_curve([1e-3, 1e-2], [1.0, 0.5])


def test_debiased_is_fastais_bias_corrected_average():
    raw = [2.0, 1.0, 3.0, float("nan"), 0.5]
    beta = 0.9
    avg, out = 0.0, []
    for i, x in enumerate([2.0, 1.0, 3.0, 0.5], start=1):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** i))
    got = lr_curve.debiased(raw, 0.1)
    assert got[:3] == pytest.approx(out[:3]) and math.isnan(got[3]) and got[4] == pytest.approx(out[3])
    assert lr_curve.debiased([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_a_lucky_first_batch_does_not_fool_the_rules_on_the_debiased_curve():
    # A regression-like sweep: the first batch happens to be easy (loss 0.2), the rest sit at
    # 1.0, fall to 0.7 around LR 1e-2 and blow up past 1. torch-lr-finder's curve starts at 0.2
    # and stays below 0.7 for dozens of points, so "minimum" lands near the sweep's start.
    lrs = lr_curve.sweep_lrs(1e-7, 10.0, 100)
    rng = np.random.default_rng(0)
    raw = [1.0 - 0.3 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + max(0.0, math.log10(lr)) * 3
           + 0.02 * rng.standard_normal() for lr in lrs]
    raw[0] = 0.2
    legacy = lr_curve.minimum(lrs, lr_curve.smooth(raw, 0.05))["lr"]
    assert legacy < 1e-6
    for method in lr_curve.METHODS:
        lr = lr_curve.suggest(lrs, lr_curve.debiased(raw, 0.05), method)["lr"]
        assert 1e-4 <= lr <= 1.0, (method, lr)
