"""Window health checks that keep unstable trials from winning an AutoLRS stage."""

import numpy as np

from autolrs.trial_checks import WindowHealth, unstable_reasons, window_health

X = np.arange(80)


def smooth_fall(seed=0, noise=0.02):
    return 2 * np.exp(-0.05 * X) + 0.5 + noise * np.random.default_rng(seed).standard_normal(X.size)


def test_a_healthy_decaying_window_passes():
    for seed in range(5):
        h = window_health(smooth_fall(seed))
        assert not h.rising_tail and h.spikes < 2 and h.reasons() == []


def test_a_plateau_is_not_a_rising_tail():
    y = 0.7 + 0.03 * np.random.default_rng(1).standard_normal(X.size)
    assert not window_health(y).rising_tail


def test_a_loss_that_falls_and_climbs_back_has_a_rising_tail():
    y = smooth_fall()
    y[50:] += 0.02 * np.arange(30)  # turns upwards for the last 30 steps
    h = window_health(y)
    assert h.rising_tail and "rising tail" in h.reasons()


def test_spikes_in_the_second_half_count_one_outlier_does_not():
    y = smooth_fall(2)
    y[60] += 1.0
    assert window_health(y).reasons() == []  # one bad batch
    y[70] += 1.0
    assert window_health(y).spikes == 2 and "2 spikes" in window_health(y).reasons()


def test_noise_far_above_the_peers_is_flagged():
    healths = [window_health(smooth_fall(s, 0.02)) for s in range(4)] + [window_health(smooth_fall(9, 0.5))]
    reasons = unstable_reasons(healths + [None])
    assert reasons[:4] == [[], [], [], []]
    assert reasons[4] and "peers" in reasons[4][0]
    assert reasons[5] == ["failed"]


def test_short_or_non_finite_windows_are_not_judged():
    assert window_health([1.0, 0.9]).reasons() == []
    h = window_health([1.0, float("nan"), 0.8, 0.7, 0.6])
    assert isinstance(h, WindowHealth) and h.reasons() == []
