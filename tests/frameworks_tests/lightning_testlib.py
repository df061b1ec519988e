"""A tiny Lightning module on the digits and a trainer for the Lightning adapter's tests (also
run by the killed-trainer script in a subprocess)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from autolrs.testing.training import digits as load_digits
from autolrs.testing.training import make_mlp


def module_class(package):
    """A LightningModule class of ``package`` (``lightning.pytorch`` or ``pytorch_lightning``:
    each Trainer wants its own package's modules)."""

    class DigitsModule(package.LightningModule):
        def __init__(self, scheduler: bool = False):
            super().__init__()
            self.net = make_mlp()
            self.scheduler = scheduler

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            if self.scheduler:
                return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 10)]
            return optimizer

    return DigitsModule


DigitsModule = module_class(pl)


class StepLRs(pl.Callback):
    """The LR of every optimizer step, read as the step is taken."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def loaders(batch=32):
    x, y = load_digits()
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:1500], y[:1500]), batch_size=batch,
                                        shuffle=True, generator=torch.Generator().manual_seed(0))
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1500:], y[1500:]), batch_size=150)
    return train, val


def trainer(callbacks, package=pl, **kwargs):
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=1.0, check_val_every_n_epoch=None, val_check_interval=1000, deterministic=True)
    options.update(kwargs)
    return package.Trainer(callbacks=callbacks, **options)
