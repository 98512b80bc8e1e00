"""Flax Linen modules. They create parameters and call :mod:`cnnjax.ops`; nothing more."""

from cnnjax.nn import initializers
from cnnjax.nn._inception import BRANCHES as INCEPTION_BRANCHES
from cnnjax.nn._inception import INPUT_CONVS as INCEPTION_INPUT_CONVS
from cnnjax.nn._inception import Inception
from cnnjax.nn._layers import (
    AvgPool,
    Conv,
    ConvBNAct,
    GlobalAvgPool,
    LocallyConnected,
    MaxPool,
    he_normal,
)

__all__ = [
    "INCEPTION_BRANCHES",
    "INCEPTION_INPUT_CONVS",
    "AvgPool",
    "Conv",
    "ConvBNAct",
    "GlobalAvgPool",
    "Inception",
    "LocallyConnected",
    "MaxPool",
    "he_normal",
    "initializers",
]
