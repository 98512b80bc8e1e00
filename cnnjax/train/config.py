"""The training configuration: every field, its default and what it means.

Experiment config files start from :func:`default_config` and change fields; anything not
listed here is rejected with the list of valid keys.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


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
    c.conv_backend = "xla"
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


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming unknown keys and listing the valid ones."""
    valid = set(default_config().keys())
    unknown = sorted(set(config.keys()) - valid)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(valid))}."
        )
    choices = {
        "optimizer": ("sgd", "adamw"),
        "schedule": ("piecewise", "cosine", "constant"),
        "compute_dtype": ("float32", "bfloat16"),
        "parallel": ("jit", "pmap"),
        "preprocess": ("standardize", "gcn_zca", "none"),
    }
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ValueError(f"`config.{key}` must be one of {allowed}, got {config[key]!r}.")
    for key in ("batch_size", "num_epochs", "eval_batch_size", "keep_checkpoints"):
        if config[key] < 1:
            raise ValueError(f"`config.{key}` must be at least 1, got {config[key]}.")
