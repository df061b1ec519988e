"""In-process learning-rate methods that change the model or the optimizer itself, so they run
inside the training process: Alrao ("Learning with Random Learning Rates", Blier, Wolinski &
Ollivier 2018). Torch only: never imports the server or zmq.

    model = AlraoModel("classification", nn.NLLLoss(), preclassifier, 10, LinearClassifier, 64, 10)
    optimizer = AlraoSGD(model, lr_min=1e-5, lr_max=10.0, seed=0)
    for x, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.nll_loss(model(x), y)     # the mixture's loss
        loss.backward()
        alrao_step(model, optimizer, y)                 # copies' own losses, step, Switch update
"""

from autolrs.optim.layers import L2LossAdditional, L2LossLog, LinearClassifier, LinearClassifierRNN, LinearRegressor
from autolrs.optim.model import AlraoModel
from autolrs.optim.optimizers import AlraoAdam, AlraoSGD, alrao_step
from autolrs.optim.sampling import classifier_lrs, log_uniform, sample_unit_lrs
from autolrs.optim.switch import Switch

__all__ = [
    "AlraoModel",
    "AlraoSGD",
    "AlraoAdam",
    "alrao_step",
    "Switch",
    "classifier_lrs",
    "log_uniform",
    "sample_unit_lrs",
    "LinearClassifier",
    "LinearClassifierRNN",
    "LinearRegressor",
    "L2LossLog",
    "L2LossAdditional",
]
