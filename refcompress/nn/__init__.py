"""refcompress.nn: a small NumPy network toolkit with explicit forward and backward.

Modules have PyTorch-shaped weights, NCHW layout and PyTorch state-dict names; losses
return ``(value, grad)``; optimizers follow PyTorch's update rules and apply the
Parameter hooks that pruning uses; :func:`fit` trains with a pluggable per-batch step.
See docs/nn.md.
"""

from . import functional, init, losses, optim
from .container import Sequential
from .init import manual_seed
from .layers import Conv2d, Dropout, Flatten, Linear, ReLU
from .losses import cross_entropy, kl_div, mse
from .module import HookHandle, IncompatibleKeys, Module, Parameter, TrainingModes, training_modes
from .norm import BatchNorm1d, BatchNorm2d
from .optim import SGD, AdamW, CosineAnnealingLR, StepLR
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .spec import from_spec, register_module, registered_modules, to_spec
from .train import History, evaluate, fit, iter_batches, predict
from .transformer import (GELU, BertAttention, BertEmbeddings, BertEncoder, BertIntermediate,
                          BertLayer, BertModel, BertOutput, BertPooler, BertSelfOutput, Embedding,
                          LayerNorm, MultiHeadSelfAttention, Softmax, Tanh)

__all__ = [
    "Module", "Parameter", "HookHandle", "IncompatibleKeys", "TrainingModes", "training_modes",
    "Sequential", "Linear", "Conv2d", "ReLU", "Flatten", "Dropout",
    "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d",
    "cross_entropy", "mse", "kl_div",
    "SGD", "AdamW", "StepLR", "CosineAnnealingLR",
    "fit", "evaluate", "predict", "iter_batches", "History",
    "to_spec", "from_spec", "register_module", "registered_modules",
    "manual_seed", "functional", "init", "losses", "optim",
    "Embedding", "LayerNorm", "GELU", "Tanh", "Softmax", "MultiHeadSelfAttention",
    "BertSelfOutput", "BertAttention", "BertIntermediate", "BertOutput", "BertLayer",
    "BertEncoder", "BertEmbeddings", "BertPooler", "BertModel",
]
