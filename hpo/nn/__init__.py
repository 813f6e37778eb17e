"""A from-scratch NumPy MLP after chapter 6 of "Deep Learning from Scratch" (float32 by default).

No Optuna here: ``hpo.nn`` is the model and the training loop of one trial.
"""

from hpo.nn.layers import Affine, BatchNorm, Dropout, Relu, SoftmaxWithLoss
from hpo.nn.net import MLP
from hpo.nn.optim import SGD, AdaGrad, Adam, Momentum, make_optimizer
from hpo.nn.train import TrainResult, train

__all__ = [
    "MLP",
    "SGD",
    "AdaGrad",
    "Adam",
    "Affine",
    "BatchNorm",
    "Dropout",
    "Momentum",
    "Relu",
    "SoftmaxWithLoss",
    "TrainResult",
    "make_optimizer",
    "train",
]
