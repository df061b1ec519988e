"""The Hugging Face adapter on a real server: a tiny randomly initialised BERT classifier (no
download) reads the digits as 64-token sequences and trains under ``transformers.Trainer`` with
``cosine`` and with ``autolrs``, with gradient accumulation; every optimizer step's LR is checked
against the server's decision log, the losses the tuner gets against the Trainer's own logged
loss; the Trainer's default (linear) scheduler is refused."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from autolrs.callbacks.transformers import AutoLRSCallback  # noqa: E402
from autolrs.testing.training import digits as load_digits  # noqa: E402
from shared_testlib import decisions, lr_history  # noqa: E402


class DigitTokens(torch.utils.data.Dataset):
    """Each 8x8 digit as 64 tokens (its pixel intensities 0..16), labelled with the digit."""

    def __init__(self):
        x, self.y = load_digits()
        self.tokens = (x * 16).round().long()

    def __len__(self):
        return 1500

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.y[i]}


class StepLRs(transformers.TrainerCallback):
    """The LR of every optimizer step, read as the Trainer starts the step."""

    def __init__(self):
        self.lrs = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=17, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=10)
    return transformers.BertForSequenceClassification(config)


def train(callbacks, tmp_path, max_steps, accumulation=2, **kwargs):
    options = dict(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=16,
                   gradient_accumulation_steps=accumulation, learning_rate=1e-3, lr_scheduler_type="constant",
                   report_to=[], save_strategy="no", logging_steps=5, use_cpu=True, disable_tqdm=True, seed=0)
    options.update(kwargs)
    trainer = transformers.Trainer(model=tiny_bert(), args=transformers.TrainingArguments(**options),
                                   train_dataset=DigitTokens(), callbacks=callbacks)
    trainer.train()
    return trainer


def test_cosine_follows_the_decision_log_and_the_trainer_logs_its_lrs(live_server, tmp_path):
    server = live_server()
    record = StepLRs()
    cb = AutoLRSCallback(tuner="cosine", config={"T_0": 10, "chunk": 8}, server=server.endpoint, job="hf-cosine")
    trainer = train([cb, record], tmp_path, max_steps=25)
    records = decisions(server.state_dir, "hf-cosine")
    assert records[0]["config"]["max_steps"] == 25  # the Trainer's budget
    assert len(record.lrs) == 25 and record.lrs == lr_history(records)[:25]
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference, T_0=10)
    expected = []
    for _ in range(25):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        scheduler.step()
    assert record.lrs == expected
    # The Trainer's constant scheduler wrote the tuner's LRs back: it logs them as its own.
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == [expected[step - 1] for step in (5, 10, 15, 20, 25)]
    assert records[-1]["kind"] == "goodbye"


def test_autolrs_with_accumulation_gets_the_trainers_loss_per_step(live_server, tmp_path):
    server = live_server()
    record = StepLRs()
    config = {"tau": 10, "tau_max": 20, "k": 3, "lr_min": 1e-4, "lr_max": 1e-2}
    cb = AutoLRSCallback(tuner="autolrs", config=config, server=server.endpoint, job="hf-autolrs")
    train([cb, record], tmp_path, max_steps=40)
    records = decisions(server.state_dir, "hf-autolrs")
    assert record.lrs == lr_history(records)[:40]
    assert len(set(record.lrs)) > 3  # trials at several LRs
    observed = [r["observation"] for r in records if r["kind"] == "report"]
    assert observed and all(o["n_losses"] == o["n_finite"] for o in observed)
    assert any(o["n_losses"] for o in observed)


def test_the_tuner_gets_the_loss_the_trainer_logs(live_server, tmp_path):
    # record: reports every 5 steps the mean of 5 step losses; the Trainer logs the mean of the
    # same 5 steps every 5 steps.
    server = live_server()
    cb = AutoLRSCallback(tuner="record", config={"chunk": 5}, server=server.endpoint, job="hf-loss")
    trainer = train([cb], tmp_path, max_steps=15, accumulation=3)
    reports = [r for r in decisions(server.state_dir, "hf-loss") if r["kind"] == "report"]
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(reports) == len(logged) == 3
    assert [r["observation"]["mean_loss"] for r in reports] == pytest.approx(logged, rel=1e-4)


def test_the_trainers_default_scheduler_is_refused(tmp_path):
    cb = AutoLRSCallback(tuner="cosine")
    with pytest.raises(ValueError, match="lr_scheduler_type='constant'"):
        train([cb], tmp_path, max_steps=5, lr_scheduler_type="linear")
    assert cb.autolrs is None
