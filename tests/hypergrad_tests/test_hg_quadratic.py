"""HD on a noisy quadratic (least squares on minibatches, real server, real SGD): a too-small
LR moves up, a too-large LR moves down."""

import numpy as np
import pytest
import torch

from autolrs.callbacks import AutoLRS

DIM, N = 8, 512


def problem(seed=0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 2.0, DIM)  # Hessian eigenvalues ~ scales^2 in [0.25, 4]
    x = torch.tensor(rng.standard_normal((N, DIM)) * scales)
    w_star = torch.tensor(rng.standard_normal(DIM))
    y = x @ w_star + 0.3 * torch.tensor(rng.standard_normal(N))
    lam_max = float(torch.linalg.eigvalsh(x.T @ x / N).max())
    return x, y, lam_max


def hd_run(server, lr, steps=300):
    x, y, _ = problem()
    w = torch.nn.Parameter(torch.zeros(DIM, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lr)
    g = torch.Generator().manual_seed(1)
    lrs = []
    with AutoLRS(torch.nn.Module(), opt, tuner="hd", config={"beta": 0.02, "every": 10},
                 server=server.endpoint) as cb:
        for _ in range(steps):
            idx = torch.randint(0, N, (32,), generator=g)
            opt.zero_grad()
            loss = 0.5 * ((x[idx] @ w - y[idx]) ** 2).mean()
            loss.backward()
            opt.step()
            cb.step(loss)
            lrs.append(cb.lr)
    return lrs


@pytest.mark.parametrize("factor,direction", [(0.02, "up"), (1.8, "down")])
def test_hd_moves_a_bad_lr_towards_the_good_range(live_server, factor, direction):
    _, _, lam_max = problem()
    lr0 = factor / lam_max  # 1/lam_max is about the best constant LR; 2/lam_max diverges
    lrs = hd_run(live_server(), lr0)
    late = float(np.median(lrs[-100:]))
    if direction == "up":
        assert late > 5 * lr0
    else:
        assert late < 0.8 * lr0
    assert all(lr >= 0 for lr in lrs)
