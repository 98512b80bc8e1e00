"""The training configuration: every field, its default and what it means.

Experiment config files start from :func:`default_config` and change fields; anything not
listed here is rejected with the list of valid keys.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from cnnjax import models
from cnnjax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a registry name and the overrides every model accepts (None = model default).
    c.model = "all_cnn_c"
    c.width = 1.0
    c.batch_norm = config_dict.placeholder(bool)
    c.dropout = config_dict.placeholder(float)
    c.input_dropout = config_dict.placeholder(float)  # All-CNN: dropout on the input images
    c.downsample = config_dict.placeholder(str)
    c.activation = config_dict.placeholder(str)  # e.g. "gelu" (All-CNN family; default ReLU)
    c.backend = "xla"  # convolution backend of every layer: see cnnjax.ops.conv
    c.compute_dtype = "float32"  # or "bfloat16": mixed precision with float32 parameters
    # Data.
    c.dataset = "digits"  # "digits", "imagefolder" (root in data_dir) or a TFDS name
    c.data_dir = config_dict.placeholder(str)
    c.image_size = config_dict.placeholder(int)  # resize to this (digits: 32 by default)
    c.val_fraction = 0.1  # carved from train (fixed seed) when there is no validation split
    c.download = False  # TFDS may download only when this is True
    c.preprocess = "standardize"  # "standardize", "gcn_zca" or "none"
    c.crop_padding = 4  # random crops after zero padding; 0 disables
    c.flip = True  # random horizontal flips (off for digits: a mirrored 2 is no 2)
    # Optimisation.
    c.batch_size = 128  # global batch, split over devices
    c.num_epochs = 10
    c.optimizer = "sgd"  # "sgd" (momentum, optionally Nesterov) or "adamw"
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-3  # on kernels only: L2 for sgd, decoupled for adamw
    c.schedule = "piecewise"  # "piecewise", "cosine" or "constant"
    c.decay_epochs = (200, 250, 300)  # piecewise: multiply by decay_factor at these epochs
    c.decay_factor = 0.1
    c.warmup_epochs = 0.0  # linear warm-up from 0
    c.label_smoothing = 0.0
    c.grad_clip_norm = config_dict.placeholder(float)
    # Run.
    c.seed = 0
    c.parallel = "jit"  # "jit" over a device mesh, or "pmap"
    c.num_devices = config_dict.placeholder(int)  # default: all
    c.eval_every_epochs = 1
    c.eval_batch_size = 500
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 3  # the last N are kept, and the best by validation accuracy
    c.log_every_steps = 50
    c.progress = True
    return c


_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("piecewise", "cosine", "constant"),
    "compute_dtype": ("float32", "bfloat16"),
    "parallel": ("jit", "pmap"),
    "preprocess": ("standardize", "gcn_zca", "none"),
    "backend": ("xla", "fft", "gemm", "winograd", "auto"),
}
# (lowest, highest, whether the lowest itself is allowed); None fields are skipped.
_RANGES = {
    "width": (0.0, math.inf, False),
    "dropout": (0.0, 1.0, True),
    "input_dropout": (0.0, 1.0, True),
    "image_size": (1, math.inf, True),
    "val_fraction": (0.0, 1.0, False),
    "crop_padding": (0, math.inf, True),
    "batch_size": (1, math.inf, True),
    "num_epochs": (1, math.inf, True),
    "learning_rate": (0.0, math.inf, False),
    "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, math.inf, True),
    "decay_factor": (0.0, math.inf, False),
    "warmup_epochs": (0.0, math.inf, True),
    "label_smoothing": (0.0, 1.0, True),
    "grad_clip_norm": (0.0, math.inf, False),
    "seed": (0, math.inf, True),
    "num_devices": (1, math.inf, True),
    "eval_every_epochs": (1, math.inf, True),
    "eval_batch_size": (1, math.inf, True),
    "checkpoint_every_epochs": (1, math.inf, True),
    "keep_checkpoints": (1, math.inf, True),
    "log_every_steps": (1, math.inf, True),
}


def _check_range(key: str, value) -> None:
    low, high, low_ok = _RANGES[key]
    inside = (value >= low if low_ok else value > low) and value < high
    if not inside:
        lower = f"at least {low}" if low_ok else f"greater than {low}"
        upper = "" if high == math.inf else f" and below {high}"
        raise ConfigError(f"`config.{key}` must be {lower}{upper}, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every field before anything is loaded or compiled.

    Raises:
      ConfigError: naming the field and what it accepts (unknown keys list the valid ones).
    """
    valid = set(default_config().keys())
    unknown = sorted(set(config.keys()) - valid)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(valid))}."
        )
    for key, allowed in _CHOICES.items():
        if config[key] not in allowed:
            raise ConfigError(f"`config.{key}` must be one of {allowed}, got {config[key]!r}.")
    for key in _RANGES:
        if config[key] is not None:
            _check_range(key, config[key])
    if config.warmup_epochs > config.num_epochs:
        raise ConfigError(
            f"`config.warmup_epochs` ({config.warmup_epochs}) must not exceed `num_epochs` "
            f"({config.num_epochs})."
        )
    if any(e < 0 for e in config.decay_epochs):
        raise ConfigError(
            f"`config.decay_epochs` must be non-negative epochs, got {config.decay_epochs}."
        )
    check_model_config(config, config.image_size or 32)


def check_model_config(config: ml_collections.ConfigDict, image_size: int) -> None:
    """Builds the configured model and traces it on one ``image_size`` image (no compilation),
    so that a model setting it cannot use fails now, naming the setting."""
    if config.model not in models.list_models():
        raise ConfigError(
            f"`config.model` must be one of {', '.join(models.list_models())}; "
            f"got {config.model!r}."
        )
    fields = models.model_fields(config.model)
    for key in _MODEL_OVERRIDES:
        if config[key] is not None and key not in fields:
            raise ConfigError(
                f"`config.{key}` does not apply to model {config.model!r}; leave it unset "
                f"(the model's settings: {', '.join(fields)})."
            )
    model = build_model(config, num_classes=10)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    try:
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    except ValueError as err:
        raise ConfigError(
            f"model {config.model!r} cannot be built from this config (traced on "
            f"{image_size}x{image_size} images, the size `image_size` or the dataset gives): {err}"
        ) from None


# Config fields passed to the model when set (None keeps the model's own default).
_MODEL_OVERRIDES = ("batch_norm", "dropout", "input_dropout", "downsample", "activation")


def build_model(config, num_classes: int):
    """The configured registry model, with the overrides the config sets."""
    overrides: dict[str, Any] = dict(
        num_classes=num_classes, width=config.width, backend=config.backend
    )
    if config.compute_dtype == "bfloat16":
        overrides["dtype"] = jnp.bfloat16
    for key in _MODEL_OVERRIDES:
        if config[key] is not None:
            overrides[key] = config[key]
    return models.get_model(config.model, **overrides)
