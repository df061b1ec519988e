"""``server="auto"``, the default: with nothing running, a private server in a child process per
job, state in the (test session's) cache folder, gone after close; ``$AUTOLRS_SERVER`` names a
server instead; a trainer killed mid-run and restarted resumes its job on a new embedded server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import warnings

import pytest
import torch

from autolrs.callbacks import AutoLRS, LossDiffFinder, LRFinder, ServerUnavailableWarning
from autolrs.callbacks.embedded import cache_root
from autolrs.testing.training import make_mlp, torch_lr_finder_loop


def loader(digits, seed=0, batch=64):
    x, y = digits
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True,
                                       generator=g)


def assert_no_job_folders():
    jobs = cache_root() / "jobs"
    assert not jobs.exists() or not os.listdir(jobs), os.listdir(jobs)


def test_lr_finder_with_nothing_running_draws_torch_lr_finders_curve(digits):
    criterion = torch.nn.functional.cross_entropy
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    finder = LRFinder(model, optimizer, criterion)
    finder.range_test(loader(digits), end_lr=10, num_iter=100, progress=False)

    ref_model = make_mlp()
    ref_optimizer = torch.optim.SGD(ref_model.parameters(), lr=1e-4, momentum=0.9)
    expected = torch_lr_finder_loop(ref_model, ref_optimizer, criterion, loader(digits), end_lr=10, num_iter=100)
    assert 10 < len(expected["lr"]) < 100  # the sweep diverged before its end: the stop rule counts too
    assert finder.history["lr"] == expected["lr"]
    assert finder.history["loss"] == expected["loss"]
    assert_no_job_folders()


def test_cosine_with_nothing_running_is_torchs_schedule_bit_for_bit_and_the_server_goes(digits):
    x, y = digits
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref = make_mlp()
    ref_optimizer = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_optimizer, T_0=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all: a server was there
        cb = AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 20})
    embedded = cb.embedded_server
    assert embedded is not None and embedded.process.alive
    assert cb.server == embedded.endpoint and cb.server.startswith("tcp://127.0.0.1:")
    log_path = embedded.state_dir / "jobs" / cb.job / "decisions.jsonl"
    used, expected = [], []
    for step in range(70):
        idx = slice((step * 32) % 1700, (step * 32) % 1700 + 32)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cb.step(loss)
        expected.append(ref_optimizer.param_groups[0]["lr"])
        ref_optimizer.step()
        scheduler.step()
    assert log_path.is_file()  # the job's decision log, while the callback is open
    process = embedded.process.proc
    cb.close()
    assert used == expected  # bit for bit
    assert process.poll() == 0  # the server is gone (a clean exit) ...
    assert_no_job_folders()  # ... with its folder: the job ended, nothing to resume


def test_loss_diff_finder_with_nothing_running(digits):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    finder = LossDiffFinder(model, optimizer, torch.nn.functional.cross_entropy)
    best = finder.tune(loader(digits, batch=32), lr_min=1e-4, lr_max=1.0, num_evals=5, num_subsamples=4,
                       progress=False)
    assert finder.summary["subsamples"] == 4 and len(finder.summary["lrs"]) == 5
    assert best == finder.summary["best_lr"]
    assert_no_job_folders()


def test_progress_bars_show_and_can_be_turned_off(digits, capsys):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    finder = LRFinder(model, optimizer, torch.nn.functional.cross_entropy)
    finder.range_test(loader(digits), end_lr=1.0, num_iter=12, progress=False)
    assert "range test" not in capsys.readouterr().err
    finder.range_test(loader(digits), end_lr=1.0, num_iter=12)
    assert "range test" in capsys.readouterr().err
    tuner = LossDiffFinder(model, optimizer, torch.nn.functional.cross_entropy)
    tuner.tune(loader(digits, batch=32), num_evals=3, num_subsamples=3)
    assert "loss_diff" in capsys.readouterr().err


def test_autolrs_server_in_the_environment_is_the_server(live_server, monkeypatch):
    server = live_server()
    monkeypatch.setenv("AUTOLRS_SERVER", server.endpoint)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, tuner="constant", job="from-env") as cb:
        assert cb.embedded_server is None and cb.server == server.endpoint
    assert (server.state_dir / "jobs" / "from-env" / "decisions.jsonl").is_file()


def test_an_embedded_server_that_cannot_start_fails_open(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("AUTOLRS_CACHE_DIR", str(blocker))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(ServerUnavailableWarning, match="could not start the embedded server"):
        cb = AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 5})
    for _ in range(5):  # untuned: the LR stays
        optimizer.step()
        cb.step(1.0)
    assert optimizer.param_groups[0]["lr"] == 0.1 and not cb.online
    cb.close()


TRAINER = textwrap.dedent("""
    import json, os, signal, sys, torch
    from autolrs.callbacks import AutoLRS
    from autolrs.testing.training import make_mlp, torch_lr_finder_loop
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 30, "chunk": 10}, job="killed-trainer")
    for step in range(40):
        optimizer.step()
        cb.step(1.0)
    torch.save({"optimizer": optimizer.state_dict(), "autolrs": cb.state_dict()}, sys.argv[1])
    print(json.dumps({"pid": cb.embedded_server.process.proc.pid}), flush=True)
    for step in range(5):  # trained on past the checkpoint (no report: chunks of 10), then killed
        optimizer.step()
        cb.step(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_trainer_resumes_its_job_on_a_new_embedded_server(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    result = subprocess.run([sys.executable, "-c", TRAINER, str(checkpoint)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    folder = cache_root() / "jobs" / "killed-trainer"
    assert (folder / "state" / "jobs" / "killed-trainer" / "state.json").is_file()  # kept: resumable

    state = torch.load(checkpoint)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.load_state_dict(state["optimizer"])
    # The killed trainer's server stopped with it (its lifeline closed), so a new one can take
    # the folder: the callback waits for it to let go if it is still stopping.
    cb = AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 30, "chunk": 10})
    cb.load_state_dict(state["autolrs"])
    assert cb.job == "killed-trainer" and cb.embedded_server.folder == folder
    used = []
    for _ in range(30):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cb.step(1.0)
    records = [json.loads(line) for line in
               (folder / "state" / "jobs" / "killed-trainer" / "decisions.jsonl").read_text().splitlines()]
    cb.close()
    ref_optimizer = torch.optim.SGD(make_mlp().parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_optimizer, T_0=30)
    expected = []
    for _ in range(70):
        expected.append(ref_optimizer.param_groups[0]["lr"])
        ref_optimizer.step()
        scheduler.step()
    assert used == expected[40:70]  # the schedule goes on from the checkpoint's step
    hellos = [r for r in records if r["kind"] == "hello"]
    assert [h["resumed"] for h in hellos] == [False, True]  # one job, started once, resumed once
    assert not folder.exists()  # ended now: nothing left to resume


def test_the_embedded_server_serves_the_dashboard_on_request(digits, capsys):
    x, y = digits
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 20}, job="watched", dashboard=True) as cb:
        for step in range(12):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[step * 32:(step + 1) * 32]), y[step * 32:(step + 1) * 32])
            loss.backward()
            optimizer.step()
            cb.step(loss)
        url = cb.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:") and "token=" in url
        assert f"dashboard of job watched at {url}" in capsys.readouterr().err
        base, token = url.split("?token=")
        with urllib.request.urlopen(base.rstrip("/") + f"/api/jobs?token={token}", timeout=10) as response:
            jobs = json.load(response)
        with pytest.raises(urllib.error.HTTPError) as refused:  # the job's secret guards it
            urllib.request.urlopen(base.rstrip("/") + "/api/jobs", timeout=10)
        assert refused.value.code in (401, 403)
    assert [j["job_id"] for j in jobs["jobs"]] == ["watched"]
    assert cb.dashboard_url is None  # stopped with its server


def test_dashboard_true_with_a_server_of_ones_own_warns(live_server):
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="--http-port"):
        cb = AutoLRS(model, optimizer, tuner="constant", server=server.endpoint, dashboard=True)
    assert cb.dashboard_url is None
    cb.close()
