"""Training: config, train state, jit-compiled steps, the loop, checkpoints and metrics."""

from cnnjax.train.checkpoint import CheckpointError, Checkpoints
from cnnjax.train.config import default_config, validate_config
from cnnjax.train.loop import (
    NonFiniteLossError,
    build_model,
    build_trainer,
    evaluate_checkpoint,
    load_data,
    load_run,
    train_and_evaluate,
)
from cnnjax.train.metrics import MetricWriter, read_metrics
from cnnjax.train.optim import make_optimizer, make_schedule
from cnnjax.train.trainer import Trainer, TrainState

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "MetricWriter",
    "NonFiniteLossError",
    "TrainState",
    "Trainer",
    "build_model",
    "build_trainer",
    "default_config",
    "evaluate_checkpoint",
    "load_data",
    "load_run",
    "make_optimizer",
    "make_schedule",
    "read_metrics",
    "train_and_evaluate",
    "validate_config",
]
