"""Training: config, pure train/eval steps, compiled engines, the loop, checkpoints, metrics.

Layers inside, each importing only those above it: ``config`` and ``optim`` (what to train
with); ``step`` (the pure functions); ``engine`` and ``pmap`` (the steps compiled for devices);
``build`` (config to engine); ``feed`` (each step's batch: device-resident or streamed);
``meter`` (step metrics to the logs, the loop's clock); ``loop`` (``train_and_evaluate``);
``runs`` (reading runs back).
"""

from cnnjax.errors import CheckpointError, ConfigError, NonFiniteLossError
from cnnjax.train.build import build_engine, choose_input, initial_state, load_data, stream_spec
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import (
    build_model,
    check_model_config,
    default_config,
    describe_fields,
    validate_config,
)
from cnnjax.train.engine import (
    Engine,
    eval_batches,
    evaluate,
    evaluate_batches,
    mesh_batch,
    mesh_engine,
    streamed_batch,
)
from cnnjax.train.feed import DeviceFeed, StreamFeed, evaluate_stream
from cnnjax.train.loop import train_and_evaluate
from cnnjax.train.meter import Meter
from cnnjax.train.metrics import MetricWriter, read_metrics
from cnnjax.train.optim import make_optimizer, make_schedule
from cnnjax.train.pmap import batch_share, pmap_engine
from cnnjax.train.runs import evaluate_checkpoint, load_run, saved_config
from cnnjax.train.shift import (
    predict_translated,
    shift_consistency,
    shifted_accuracy,
    translation_report,
)
from cnnjax.train.step import (
    BatchPlan,
    StepConfig,
    StepFns,
    TrainState,
    apply_grads,
    assemble_batch,
    batch_plan,
    default_tta,
    ema_update,
    eval_step,
    init_state,
    lookahead,
    loss_and_grads,
    make_step_fns,
    train_step,
    tta_logits,
    unseen_views,
    variables_of,
)

__all__ = [
    "BatchPlan",
    "CheckpointError",
    "Checkpoints",
    "ConfigError",
    "DeviceFeed",
    "Engine",
    "Meter",
    "MetricWriter",
    "NonFiniteLossError",
    "StepConfig",
    "StepFns",
    "StreamFeed",
    "TrainState",
    "apply_grads",
    "assemble_batch",
    "batch_plan",
    "batch_share",
    "build_engine",
    "build_model",
    "check_model_config",
    "choose_input",
    "default_config",
    "default_tta",
    "describe_fields",
    "ema_update",
    "eval_batches",
    "eval_step",
    "evaluate",
    "evaluate_batches",
    "evaluate_checkpoint",
    "evaluate_stream",
    "init_state",
    "initial_state",
    "load_data",
    "load_run",
    "lookahead",
    "loss_and_grads",
    "make_optimizer",
    "make_schedule",
    "make_step_fns",
    "mesh_batch",
    "mesh_engine",
    "pmap_engine",
    "predict_translated",
    "read_metrics",
    "saved_config",
    "shift_consistency",
    "shifted_accuracy",
    "stream_spec",
    "streamed_batch",
    "train_and_evaluate",
    "train_step",
    "translation_report",
    "tta_logits",
    "unseen_views",
    "validate_config",
    "variables_of",
]
