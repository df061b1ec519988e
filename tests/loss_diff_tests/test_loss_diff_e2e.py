"""loss_diff through a real server: LossDiffFinder and the in-loop form on real training.

State is restored bitwise before every probe and at the end; on a linear regression whose
Hessian is 2*I the chosen LR is 1/L = 0.5; the statistics match numpy on the recorded deltas;
a recorded delta matches the same step done by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from autolrs.callbacks import AutoLRS, AutoLRSConfigError, LossDiffFinder

from autolrs.testing.bitwise import assert_bitwise_equal
from autolrs.testing.training import make_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
F = torch.nn.functional


def snapshot(model, optimizer):
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "grads": [None if p.grad is None else p.grad for p in model.parameters()]})


def trained_adam(digits, steps=5):
    """An MLP and an Adam optimizer with moments and step counts that are not zero."""
    x, y = digits
    model = make_mlp()
    optimizer = torch.optim.Adam([{"params": model[0].parameters()},
                                  {"params": model[2].parameters(), "lr": 3e-4}], lr=1e-3, weight_decay=1e-4)
    for i in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x[64 * i:64 * (i + 1)]), y[64 * i:64 * (i + 1)]).backward()
        optimizer.step()
    return model, optimizer


def test_probes_restore_state_bitwise_and_statistics_match_numpy(live_server, digits, tmp_path):
    server = live_server()
    model, optimizer = trained_adam(digits)
    before = snapshot(model, optimizer)
    x, y = digits
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)  # in order
    seen = []  # the state each probe's optimizer step starts from

    def pre_step(opt, args, kwargs):
        seen.append(copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "lrs": [g["lr"] for g in opt.param_groups]}))

    hook = optimizer.register_step_pre_hook(pre_step)
    finder = LossDiffFinder(model, optimizer, F.cross_entropy, server=server.endpoint, job="ld-bitwise")
    best = finder.tune(loader, lr_min=1e-4, lr_max=1.0, num_evals=6, num_subsamples=4, alpha=0.1)
    hook.remove()

    summary = finder.summary
    lrs = summary["lrs"]
    assert summary["done"] == "completed" and len(seen) == 6 * 4
    for k, state in enumerate(seen):  # every probe starts from the state before the tune ...
        assert_bitwise_equal(state["model"], before["model"])
        assert_bitwise_equal(state["optimizer"]["state"], before["optimizer"]["state"])
        assert state["lrs"] == pytest.approx([lrs[k % 6], lrs[k % 6] * 0.3])  # ... at its LR, ratio kept
    after = snapshot(model, optimizer)  # ... and the tune leaves it so, LRs included
    assert_bitwise_equal(after["model"], before["model"])
    assert_bitwise_equal(after["optimizer"], before["optimizer"])
    assert all(g is None for g in after["grads"])

    # The statistics are those of the recorded deltas.
    d = finder.get_results()
    assert d.shape == (4, 6) and np.isfinite(d).all()
    s = finder.statistics()
    assert np.allclose(s["mean"], d.mean(0)) and np.allclose(s["median"], np.median(d, 0))
    assert np.allclose(s["std"], d.std(0, ddof=1))
    low, high = scipy_stats.t.interval(0.9, 3, loc=d.mean(0), scale=scipy_stats.sem(d, axis=0))
    assert np.allclose(s["ci_low"], low) and np.allclose(s["ci_high"], high)
    assert best == finder.get_best_lr("mean") == lrs[int(np.argmin(d.mean(0)))]
    assert finder.get_best_lr("variance") == lrs[int(np.argmin(d.std(0, ddof=1)))]

    # A recorded delta is the one-step change done by hand: subsample 2, LR 4.
    m = copy.deepcopy(model)
    o = torch.optim.Adam([{"params": m[0].parameters()}, {"params": m[2].parameters()}], lr=1e-3, weight_decay=1e-4)
    o.load_state_dict(optimizer.state_dict())
    o.param_groups[0]["lr"], o.param_groups[1]["lr"] = lrs[4], lrs[4] * 0.3
    xb, yb = x[200:300], y[200:300]
    loss = F.cross_entropy(m(xb), yb)
    loss.backward()
    o.step()
    with torch.no_grad():
        assert summary["before"][2] == pytest.approx(loss.item(), rel=1e-6)
        assert d[2, 4] == pytest.approx(F.cross_entropy(m(xb), yb).item() - loss.item(), rel=1e-5, abs=1e-7)

    finder.plot(path=str(tmp_path / "ld.png"))
    assert (tmp_path / "ld.png").read_bytes()[:8] == PNG_SIGNATURE
    finder.close()


def whitened_regression(n=1024, d=5, seed=0):
    """x with x.T @ x / n == I exactly and a noisy linear target: the MSE's Hessian is 2*I, so the
    best one-step LR of plain gradient descent is 1/L = 0.5 from any point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    x = (q * n ** 0.5).float()
    y = x @ torch.randn(d, generator=g) + 0.1 * torch.randn(n, generator=g)
    return x, y


def mse(out, target):
    return F.mse_loss(out.squeeze(-1), target)


@pytest.mark.parametrize("batch,tol", [(1024, 1e-6), (128, 0.25)])
def test_best_lr_of_a_quadratic_is_one_over_L(live_server, batch, tol):
    server = live_server()
    x, y = whitened_regression()
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True,
                                         generator=g)
    finder = LossDiffFinder(model, optimizer, mse, server=server.endpoint)
    # 41 log-spaced LRs from 0.05 to 5: the 21st is 0.5, its neighbours 12% away.
    best = finder.tune(loader, lr_min=0.05, lr_max=5.0, num_evals=41, num_subsamples=8, batch_size=batch)
    assert finder.summary["lrs"][20] == pytest.approx(0.5)
    # Full batch: exactly the grid point at 1/L. Subsamples of 128 rows: their Hessians scatter
    # around 2*I, and the mean rule lands near 1/L.
    assert abs(np.log(best / 0.5)) <= (tol if batch == 1024 else np.log(1 + tol)), best
    # A quadratic's one-step change is 0 at LR 2/L and positive beyond: "max" is below 1.0.
    assert finder.get_best_lr("max") < 1.0 + 1e-9
    assert optimizer.param_groups[0]["lr"] == 0.01  # no apply_best: the LR is put back


def test_in_loop_loss_diff_restores_and_applies_the_best_lr(live_server, digits):
    server = live_server()
    x, y = digits
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # momentum buffers to restore
        idx = torch.randint(0, len(x), (64,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    before = snapshot(model, optimizer)
    config = {"lr_min": 1e-3, "lr_max": 3.0, "num_evals": 8, "num_subsamples": 5, "apply_best": True}
    steps = 0
    with AutoLRS(model, optimizer, tuner="loss_diff", config=config, server=server.endpoint, job="ld-loop",
                 probe_fn=lambda: F.cross_entropy(model(xb), yb)) as cb:
        for _ in range(50):
            idx = torch.randint(0, len(x), (64,), generator=g)
            xb, yb = x[idx], y[idx]  # the batch probe_fn sees when the next plan probes
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            cb.step(loss)
            steps += 1
            if cb.should_stop:
                break
        assert cb.summary is None  # it comes with the goodbye reply
        cb.close(timeout=5.0)
    assert cb.should_stop and steps == 5 + 1
    summary = cb.summary
    assert summary["done"] == "completed" and len(summary["deltas"]) == 5
    after = snapshot(model, optimizer)
    assert_bitwise_equal(after["model"], before["model"])
    assert_bitwise_equal(after["optimizer"]["state"], before["optimizer"]["state"])
    assert optimizer.param_groups[0]["lr"] == summary["best_lr"] == summary["best"]["mean"]["lr"]
    assert summary["best_lr"] != 0.01


def test_a_client_without_probe_fn_is_refused_before_training(live_server, digits):
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(AutoLRSConfigError, match="probe_fn"):
        AutoLRS(model, optimizer, tuner="loss_diff", server=server.endpoint, job="ld-no-probe")


def test_loss_diff_tuner_fails_open_without_a_server(digits):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model, optimizer = trained_adam(digits, steps=2)
    before = snapshot(model, optimizer)
    x, y = digits
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    finder = LossDiffFinder(model, optimizer, F.cross_entropy, server=f"tcp://127.0.0.1:{port}", timeout=0.3)
    with pytest.warns(Warning) as record:
        assert finder.tune(loader, num_evals=3, num_subsamples=2) is None
    assert any("did not finish" in str(w.message) for w in record)
    assert_bitwise_equal(snapshot(model, optimizer), before)
    with pytest.raises(RuntimeError, match="tune"):
        finder.get_best_lr()


def test_the_former_name_loss_diff_tuner_still_works_with_a_deprecation_warning():
    import autolrs.callbacks
    import autolrs.callbacks.loss_diff

    with pytest.warns(DeprecationWarning, match="LossDiffFinder") as record:
        assert autolrs.callbacks.LossDiffTuner is LossDiffFinder
    assert record[0].filename == __file__  # pointed at the line that used the old name
    with pytest.warns(DeprecationWarning, match="LossDiffFinder"):
        from autolrs.callbacks.loss_diff import LossDiffTuner  # noqa: F401
    with pytest.warns(DeprecationWarning, match="LossDiffFinder"):
        from autolrs.callbacks import LossDiffTuner  # noqa: F401,F811
