"""The Switch posterior against a direct numpy transcription of the reference's update
(weights in linear space, steps 1-5 of algorithms.md section 4.4), on scripted likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autolrs.optim import Switch


def reference_switch(logliks: np.ndarray, theta: float) -> list[np.ndarray]:
    """Posterior after each update, computed literally (no log space)."""
    n = logliks.shape[1]
    w = np.empty((2, n))
    w[0], w[1] = theta / n, (1 - theta) / n
    t = 1
    posteriors = []
    for ll in logliks:
        w = w * np.exp(ll)                     # 2. both rows
        pi = 1.0 / (t + 1)                     # 3. switch-time prior
        pool = pi * w[0].sum()
        w[0] *= 1 - pi
        w[0] += theta * pool / n               # 4. redistribute uniformly
        w[1] += (1 - theta) * pool / n
        w /= w.sum()                           # 5. normalise
        posteriors.append(w[0] + w[1])
        t += 1
    return posteriors


@pytest.mark.parametrize("theta", [0.9999, 0.9, 0.5])
def test_posterior_follows_the_reference_update(theta):
    rng = np.random.default_rng(0)
    n, steps = 5, 60
    # Model 3 best early, model 1 best late: the posterior has to switch.
    logliks = -rng.uniform(0.5, 2.0, size=(steps, n))
    logliks[:30, 3] += 1.0
    logliks[30:, 1] += 1.5
    switch = Switch(n, theta=theta)
    assert torch.allclose(switch.posterior(), torch.full((n,), 1 / n, dtype=torch.float64))
    expected = reference_switch(logliks, theta)
    for ll, post in zip(logliks, expected):
        got = switch.update_loglik(torch.from_numpy(ll)).numpy()
        np.testing.assert_allclose(got, post, rtol=1e-10, atol=1e-14)
        assert abs(got.sum() - 1.0) < 1e-12
        assert abs(np.exp(switch.logw.numpy()).sum() - 1.0) < 1e-12
    assert int(switch.t) == steps + 1
    assert np.argmax(expected[29]) == 3 and np.argmax(expected[-1]) == 1


def test_single_model_posterior_stays_one():
    switch = Switch(1)
    for ll in (-1.0, -5.0, -0.1):
        assert switch.update_loglik([ll]).tolist() == [1.0]


def test_non_finite_likelihood_gets_no_weight_and_poisons_nothing():
    switch = Switch(3)
    post = switch.update_loglik([-1.0, math.nan, -1.2])
    assert torch.isfinite(post).all() and abs(post.sum().item() - 1) < 1e-12
    # Only the mass the switch prior redistributes (half of it at t = 1) reaches it.
    assert post[1] < 0.5 * min(post[0], post[2])
    with pytest.raises(ValueError):
        switch.update_loglik([math.nan, math.inf, -math.inf])


def test_update_from_outputs_uses_the_batch_mean_or_whole_batch_log_likelihood():
    torch.manual_seed(0)
    outputs = [F.log_softmax(torch.randn(8, 4), -1) for _ in range(3)]
    y = torch.randint(0, 4, (8,))
    per_batch = -torch.stack([F.nll_loss(o, y, reduction="sum") for o in outputs]).double()
    batch, mean, direct = Switch(3, likelihood="batch"), Switch(3), Switch(3)
    assert mean.likelihood == "mean"  # the default: the original's
    batch.update(outputs, y)
    mean.update(outputs, y)
    direct.update_loglik(per_batch)
    assert torch.allclose(batch.logposterior, direct.logposterior)
    original = Switch(3)
    original.update_loglik(per_batch / 8)  # the original: the batch-mean log-likelihood
    assert torch.allclose(mean.logposterior, original.logposterior)


def test_forward_is_the_log_of_the_posterior_weighted_mixture():
    torch.manual_seed(1)
    switch = Switch(3)
    switch.update_loglik([-1.0, -3.0, -2.0])
    outputs = [F.log_softmax(torch.randn(5, 4), -1) for _ in range(3)]
    mix = switch(outputs)
    direct = sum(p * o.exp() for p, o in zip(switch.posterior().float(), outputs)).log()
    assert torch.allclose(mix, direct, atol=1e-6)
    assert torch.allclose(mix.exp().sum(-1), torch.ones(5), atol=1e-6)


def test_state_round_trips():
    a = Switch(4)
    a.update_loglik([-1.0, -2.0, -0.5, -3.0])
    b = Switch(4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.logw, b.logw) and torch.equal(a.logposterior, b.logposterior) and int(b.t) == 2
    ll = [-0.3, -0.2, -0.9, -0.1]
    assert torch.equal(a.update_loglik(ll), b.update_loglik(ll))


def test_regression_needs_a_loss():
    with pytest.raises(ValueError):
        Switch(2, task="regression")
