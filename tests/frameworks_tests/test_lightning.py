"""The Lightning adapter on a real server: a tiny model on the digits trained by ``Trainer.fit``
with ``cosine`` (gradient accumulation) and with ``autolrs`` (on the trainer's validation), every
optimizer step's LR checked against the server's decision log; a configured LR scheduler
refused; a run killed after a checkpoint and resumed from it continues the same job; the
``pytorch_lightning`` package's Trainer; two DDP ranks on one job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from autolrs.callbacks.lightning import AutoLRSCallback  # noqa: E402
from autolrs.testing.training import make_mlp  # noqa: E402
from lightning_testlib import DigitsModule, StepLRs, loaders, trainer  # noqa: E402
from shared_testlib import decisions, lr_history  # noqa: E402

HERE = Path(__file__).resolve().parent


def test_cosine_with_gradient_accumulation_follows_the_decision_log(live_server):
    server = live_server()
    record = StepLRs()
    cb = AutoLRSCallback(tuner="cosine", config={"T_0": 10, "chunk": 8}, server=server.endpoint, job="pl-cosine")
    train, val = loaders()
    trainer([cb, record], max_steps=25, accumulate_grad_batches=2).fit(DigitsModule(), train, val)
    records = decisions(server.state_dir, "pl-cosine")
    assert records[0]["config"]["max_steps"] == 25  # the trainer's budget
    assert len(record.lrs) == 25  # one LR per optimizer step, not per batch
    assert record.lrs == lr_history(records)[:25]
    reference = torch.optim.SGD(make_mlp().parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference, T_0=10)
    expected = []
    for _ in range(25):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        scheduler.step()
    assert record.lrs == expected
    assert records[-1]["kind"] == "goodbye"
    # Each report's losses are those of optimizer steps: a report per 8 steps, 8 losses each.
    reports = [r for r in records if r["kind"] == "report"]
    assert [r["observation"]["n_losses"] for r in reports[:3]] == [8, 8, 8]


def test_autolrs_judges_trials_on_the_trainers_validation(live_server):
    server = live_server()
    record = StepLRs()
    config = {"tau": 8, "tau_max": 16, "k": 3, "val_points": 2, "lr_min": 1e-3, "lr_max": 1.0}
    cb = AutoLRSCallback(tuner="autolrs", config=config, server=server.endpoint, job="pl-autolrs")
    train, val = loaders()
    trainer([cb, record], max_steps=40).fit(DigitsModule(), train, val)
    records = decisions(server.state_dir, "pl-autolrs")
    assert records[0]["config"]["has_val_fn"] is True
    assert record.lrs == lr_history(records)[:40]
    evals = [e[1] for r in records if r["kind"] == "report" for e in r["observation"]["evals"]]
    assert evals and all(0 < v < 5 for v in evals)  # real validation losses from the trainer's loop
    assert cb.autolrs.summary["mode"] == "val"


def test_a_configured_lr_scheduler_is_refused():
    cb = AutoLRSCallback(tuner="cosine")
    train, val = loaders()
    with pytest.raises(ValueError, match="also returned an LR scheduler.*StepLR"):
        trainer([cb], max_steps=5).fit(DigitsModule(scheduler=True), train, val)
    assert cb.autolrs is None  # refused before any job was started


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, sys.argv[3])
    import lightning.pytorch as pl
    from lightning_testlib import DigitsModule, loaders, trainer
    from autolrs.callbacks.lightning import AutoLRSCallback

    class KillAfter(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 25:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=sys.argv[2], every_n_train_steps=10, save_top_k=-1)
    cb = AutoLRSCallback(tuner="cosine", config={"T_0": 30, "chunk": 10}, server=sys.argv[1], job="pl-resume")
    train, val = loaders()
    trainer([cb, checkpoints, KillAfter()], max_steps=40, enable_checkpointing=True).fit(DigitsModule(), train, val)
""")


def test_a_run_killed_and_resumed_from_its_checkpoint_continues_the_same_job(live_server, tmp_path):
    server = live_server()
    ckpt_dir = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, server.endpoint, str(ckpt_dir), str(HERE)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    checkpoint = next(p for p in ckpt_dir.iterdir() if "step=20" in p.name)
    saved = torch.load(checkpoint, weights_only=False)["callbacks"]["AutoLRSCallback"]
    assert saved["job"] == "pl-resume" and saved["step"] == 20

    record = StepLRs()
    cb = AutoLRSCallback(tuner="cosine", config={"T_0": 30, "chunk": 10}, server=server.endpoint)
    train, val = loaders()
    trainer([cb, record], max_steps=40).fit(DigitsModule(), train, val, ckpt_path=str(checkpoint))
    assert cb.autolrs.job == "pl-resume" and cb.autolrs.global_step == 40
    reference = torch.optim.SGD(make_mlp().parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference, T_0=30)
    expected = []
    for _ in range(40):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        scheduler.step()
    assert record.lrs == expected[20:40]  # the schedule goes on from the checkpoint's step
    records = decisions(server.state_dir, "pl-resume")
    hellos = [r for r in records if r["kind"] == "hello"]
    assert hellos[0]["resumed"] is False and all(h["resumed"] for h in hellos[1:])  # one job throughout
    assert records[-1]["kind"] == "goodbye" and records[-1]["step"] == 40


def test_the_callback_works_with_the_pytorch_lightning_package_too(live_server):
    package = pytest.importorskip("pytorch_lightning")
    from lightning_testlib import module_class

    server = live_server()
    record = package.Callback()
    lrs = []
    record.on_before_optimizer_step = lambda trainer, module, optimizer: lrs.append(optimizer.param_groups[0]["lr"])
    cb = AutoLRSCallback(tuner="cosine", config={"T_0": 5}, server=server.endpoint, job="pl-classic")
    train, val = loaders()
    trainer([cb, record], package=package, max_steps=12).fit(module_class(package)(), train, val)
    assert lrs == lr_history(decisions(server.state_dir, "pl-classic"))[:12] and len(set(lrs)) == 5


DDP_RUN = textwrap.dedent('''
    import json, os, sys
    import torch
    sys.path.insert(0, {here!r})
    import lightning.pytorch as pl
    from lightning_testlib import DigitsModule, StepLRs, loaders, trainer
    from autolrs.callbacks.lightning import AutoLRSCallback

    torch.set_num_threads(1)
    record = StepLRs()
    config = {{"tau": 6, "tau_max": 12, "k": 2, "val_points": 2, "lr_min": 1e-3, "lr_max": 1.0}}
    cb = AutoLRSCallback(tuner="autolrs", config=config, server=sys.argv[1], job="pl-ddp")
    train, val = loaders()
    fit = trainer([cb, record], max_steps=24, devices=2, strategy="ddp")
    model = DigitsModule()
    fit.fit(model, train, val)
    weights = float(sum(p.double().sum() for p in model.parameters()))
    with open(os.path.join(sys.argv[2], f"rank{{fit.global_rank}}.json"), "w") as f:
        json.dump({{"lrs": record.lrs, "weights": weights, "job": cb.autolrs.job}}, f)
''')


def test_under_the_ddp_strategy_every_rank_follows_rank_0s_job(live_server, tmp_path):
    server = live_server()
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN.format(here=str(HERE)))
    result = subprocess.run([sys.executable, str(script), server.endpoint, str(tmp_path)], capture_output=True,
                            text=True, timeout=400, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["job"] == r1["job"] == "pl-ddp"  # one job, rank 0's
    records = decisions(server.state_dir, "pl-ddp")
    assert r0["lrs"] == r1["lrs"] == lr_history(records)[:24]
    assert r0["weights"] == r1["weights"]  # the replicas stayed identical through trials and restores
