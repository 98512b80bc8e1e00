"""The training configuration: every field, its default and what it means.

Experiment config files start from :func:`default_config` and change fields; anything not
listed here is rejected with the list of valid keys.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.train import groups


def default_config() -> ml_collections.ConfigDict:
    """Every field of a training config, with its default; the comments say what each means."""
    c = ml_collections.ConfigDict()
    for section in (_model_fields, _data_fields, _optimisation_fields, _run_fields):
        section(c)
    return c


def describe_fields() -> str:
    """Every field as ``--config.NAME=DEFAULT  what it means`` (the comments of the field
    definitions below), section by section: what ``--config_help`` prints."""
    import inspect
    import re

    defaults, out = default_config(), []
    for section in (_model_fields, _data_fields, _optimisation_fields, _run_fields):
        out.append(f"{section.__name__.strip('_').replace('_fields', '')} fields:")
        notes: list[str] = []
        for line in inspect.getsource(section).splitlines()[1:]:
            line = line.strip()
            field = re.match(r"c\.(\w+) = .*?(?:  # (.*))?$", line)
            if line.startswith("#"):
                notes.append(line.lstrip("# "))
            elif field:
                name, comment = field.group(1), field.group(2)
                text = " ".join([*notes, comment or ""]).strip()
                out.append(f"  --config.{name}={defaults[name]!r}" + (f"  {text}" if text else ""))
                notes = []
    return "\n".join(out)


def _model_fields(c: ml_collections.ConfigDict) -> None:
    # A registry name and the overrides every model accepts (None = the model's default).
    c.model = "all_cnn_c"
    c.width = 1.0
    c.batch_norm = config_dict.placeholder(bool)
    c.dropout = config_dict.placeholder(float)
    c.input_dropout = config_dict.placeholder(float)  # All-CNN: dropout on the input images
    c.downsample = config_dict.placeholder(str)
    c.activation = config_dict.placeholder(str)  # e.g. "gelu" (All-CNN family; default ReLU)
    c.aux_logits = config_dict.placeholder(bool)  # googlenet: its two auxiliary classifiers
    # Any other field of the model's class, by name (a config file's
    # `c.model_kwargs = dict(logit_scale=1 / 256)`); checked against the model's fields.
    c.model_kwargs = ml_collections.ConfigDict()
    c.backend = "xla"  # convolution backend of every layer: see cnnjax.ops.conv
    c.compute_dtype = "float32"  # or "bfloat16": mixed precision with float32 parameters


def _data_fields(c: ml_collections.ConfigDict) -> None:
    c.dataset = "digits"  # "digits", "imagefolder" (root in data_dir) or a TFDS name
    c.data_dir = config_dict.placeholder(str)
    c.image_size = config_dict.placeholder(int)  # resize to this (digits: 32 by default)
    c.val_fraction = 0.1  # carved from train when there is none; 0: train on all of it
    c.split_seed = 0  # the carve's seed: the same held-out images whatever the run's `seed`
    # Train on this fraction of the training split (a fixed-seed subset; smaller fractions are
    # subsets of larger ones).
    c.train_fraction = 1.0
    # Where batches come from: "device" (the split decoded once and held on every device, each
    # batch drawn inside the step), "stream" (read, decoded and augmented batch by batch on the
    # host by grain workers: cnnjax.data.stream), or "auto": stream when the decoded training
    # split would take more than `device_data_gb` on each device, or `augment` needs the host.
    c.input = "auto"
    c.device_data_gb = 4.0  # "auto": the most decoded training data to hold on each device
    c.input_workers = config_dict.placeholder(int)  # stream: decoding processes (default: cores-1)
    # "crop_flip": crop_padding, crop_mode and flip below; "inception" (streamed): the random-
    # resized crops of the Inception paper and flips, evaluated on a centre crop.
    c.augment = "crop_flip"
    c.data_cache = True  # image folders: reuse decoded arrays (see cnnjax.data.load_image_folder)
    c.skip_bad_images = False  # image folders: skip files that cannot be decoded (with a warning)
    c.download = False  # TFDS may download only when this is True
    c.preprocess = "standardize"  # "standardize", "gcn_zca" or "none"
    c.crop_padding = 4  # random crops after padding by this many pixels; 0 disables
    c.crop_mode = "zeros"  # padding for the crops: "zeros" or "reflect"
    c.flip = True  # horizontal flips (off for digits: a mirrored 2 is no 2)
    # "random": each image, each step; "alternating": each image flipped at random once, then
    # the whole set flipped every other epoch (airbench)
    c.flip_mode = "random"
    c.patch_whitening = False  # set the first convolution to whiten image patches (airbench)
    c.whitening_images = 5000  # training images the patch covariance is estimated from
    c.whitening_eps = 5e-4
    # The final evaluation also with test-time augmentation: "mirror", "mirror_translate" or
    # "translate" (cnnjax.train.tta_logits); views the training never made are warned about.
    c.tta = "none"


def _optimisation_fields(c: ml_collections.ConfigDict) -> None:
    c.batch_size = 128  # global batch, split over devices
    c.num_epochs = 10.0  # may be fractional: the run stops after ceil(epochs · steps/epoch)
    c.optimizer = "sgd"  # "sgd" (momentum, optionally Nesterov), "adamw" or "muon"
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-3  # L2 for sgd and muon's sgd part, decoupled for adamw
    c.weight_decay_on = "kernels"  # "kernels" (matrices and conv kernels) or "all"
    # "standard", or "per_1024" (airbench): learning_rate and weight_decay per 1,024 examples
    # of a summed loss, independent of momentum (see cnnjax.train.optim.decoupled_hyperparameters)
    c.hyper_form = "standard"
    c.schedule = "piecewise"  # "piecewise", "cosine", "constant" or "linear"
    c.decay_epochs = (200, 250, 300)  # piecewise: multiply by decay_factor at these epochs
    c.decay_factor = 0.1
    c.warmup_epochs = 0.0  # linear warm-up over this many epochs
    c.warmup_start = 0.0  # the warm-up starts at this fraction of the rate
    c.final_lr_factor = 0.0  # "linear": decays from the rate to this fraction of it
    c.label_smoothing = 0.0
    # Models with auxiliary classifiers (googlenet): their losses, times this, join the loss.
    c.aux_loss_weight = 0.3
    c.grad_clip_norm = config_dict.placeholder(float)
    # Parameter groups, by glob patterns on parameter paths such as "block1_bn1/bias":
    c.lr_multipliers = ""  # "pattern=factor,...": e.g. "*_bn*/bias=64"
    c.frozen = ""  # "pattern,...": never updated, no gradient computed: e.g. "whiten/kernel"
    c.train_epochs = ""  # "pattern=epochs,...": trained only for the first epochs
    c.muon_params = ""  # optimizer "muon": "pattern,..." (default: every trainable conv kernel)
    c.muon_lr = 0.24  # rate of the Muon-updated parameters (linear decay to 0)
    c.muon_momentum = 0.6
    # Weight averaging.
    c.lookahead_every = 0  # airbench's lookahead: every N steps (0: off)
    c.lookahead_decay = 0.95  # per step; the sync decay is decay^N · (step / total)^3
    c.ema_decay = 0.0  # evaluate with an exponential moving average of the weights (0: off)


def _run_fields(c: ml_collections.ConfigDict) -> None:
    c.seed = 0
    c.parallel = "jit"  # "jit" over a device mesh, or "pmap"
    c.num_devices = config_dict.placeholder(int)  # default: all
    c.eval_every_epochs = 1
    c.eval_batch_size = 500
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 3  # the last N are kept, and the best by validation accuracy
    c.log_every_steps = 50  # metrics reach the host only for a row: every N steps, epoch ends
    c.progress = True
    # How many steps the host may dispatch beyond the last one the device finished: enough to
    # hide the host's work between steps; each holds its batch and metrics in device memory.
    c.steps_in_flight = 3
    # "A:B": a profiler trace of steps A to B-1 (counted from 1) in <workdir>/profile, for
    # TensorBoard's profile tab or ui.perfetto.dev (perfetto_trace.json.gz); "" for none.
    c.profile_steps = ""
    # Resuming with a config that differs from the run's is refused unless this is True (the
    # change is then recorded in the workdir's config_changes.jsonl).
    c.allow_config_change = False


_CHOICES = {
    "optimizer": ("sgd", "adamw", "muon"),
    "schedule": ("piecewise", "cosine", "constant", "linear"),
    "hyper_form": ("standard", "per_1024"),
    "weight_decay_on": ("kernels", "all"),
    "crop_mode": ("zeros", "reflect"),
    "flip_mode": ("random", "alternating"),
    "tta": ("none", "mirror", "mirror_translate", "translate"),
    "compute_dtype": ("float32", "bfloat16"),
    "parallel": ("jit", "pmap"),
    "preprocess": ("standardize", "gcn_zca", "none"),
    "backend": ("xla", "fft", "gemm", "winograd", "auto"),
    "input": ("device", "stream", "auto"),
    "augment": ("crop_flip", "inception"),
}
# (lowest, highest, whether the lowest itself is allowed); None fields are skipped.
_RANGES = {
    "width": (0.0, math.inf, False),
    "dropout": (0.0, 1.0, True),
    "input_dropout": (0.0, 1.0, True),
    "image_size": (1, 4097, True),  # larger than any model here is built for
    "val_fraction": (0.0, 1.0, True),
    "train_fraction": (0.0, 1.000001, False),
    "whitening_images": (1, math.inf, True),
    "device_data_gb": (0.0, math.inf, False),
    "input_workers": (0, 257, True),
    "whitening_eps": (0.0, math.inf, True),
    "crop_padding": (0, math.inf, True),
    "batch_size": (1, math.inf, True),
    "num_epochs": (0.0, math.inf, False),
    "learning_rate": (0.0, math.inf, False),
    "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, math.inf, True),
    "decay_factor": (0.0, math.inf, False),
    "warmup_epochs": (0.0, math.inf, True),
    "warmup_start": (0.0, 1.0, True),
    "final_lr_factor": (0.0, math.inf, True),
    "muon_lr": (0.0, math.inf, False),
    "muon_momentum": (0.0, 1.0, True),
    "lookahead_every": (0, math.inf, True),
    "lookahead_decay": (0.0, 1.0, True),
    "ema_decay": (0.0, 1.0, True),
    "label_smoothing": (0.0, 1.0, True),
    "aux_loss_weight": (0.0, math.inf, True),
    "grad_clip_norm": (0.0, math.inf, False),
    "seed": (0, 2**32, True),  # 32 bits: what every random stream of a run is keyed by
    "split_seed": (0, 2**32, True),
    "num_devices": (1, math.inf, True),
    "eval_every_epochs": (1, math.inf, True),
    "eval_batch_size": (1, math.inf, True),
    "checkpoint_every_epochs": (1, math.inf, True),
    "keep_checkpoints": (1, math.inf, True),
    "log_every_steps": (1, math.inf, True),
    "steps_in_flight": (1, math.inf, True),
}


_KINDS = {
    bool: "True or False",
    int: "a whole number",
    float: "a number",
    str: "a string",
    tuple: "a list of numbers",
    ml_collections.ConfigDict: "a dict of model fields",
}


def _is_number(value, kind) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def _check_types(config: ml_collections.ConfigDict) -> None:
    """Every field holds a value of its default's kind (None only where the default is)."""
    defaults = default_config()
    for key in defaults.keys():
        value, kind = config[key], defaults.get_type(key)
        if value is None:
            ok = defaults[key] is None
        elif kind in (int, float):
            ok = _is_number(value, kind)
        elif kind is tuple:
            ok = isinstance(value, (tuple, list)) and all(_is_number(v, float) for v in value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ConfigError(f"`config.{key}` must be {_KINDS[kind]}, got {value!r}.")


def _check_range(key: str, value) -> None:
    low, high, low_ok = _RANGES[key]
    inside = (value >= low if low_ok else value > low) and value < high
    if not inside:
        lower = f"at least {low}" if low_ok else f"greater than {low}"
        upper = "" if high == math.inf else f" and below {high}"
        raise ConfigError(f"`config.{key}` must be {lower}{upper}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A checked config's structured string fields as values (what :func:`validate_config`
    returns, so that nothing downstream parses them again).

    Attributes:
      groups: the parameter-group fields (``frozen``, ``lr_multipliers``, ``train_epochs``,
        ``muon_params``).
      profile: ``profile_steps`` as (first, stop), or None.
    """

    groups: groups.ParamGroups
    profile: tuple[int, int] | None


def validate_config(config: ml_collections.ConfigDict) -> Parsed:
    """Checks every field before anything is loaded or compiled: types, choices, ranges, the
    model (built and traced on one image, no compilation) and the parameter-group patterns
    (each must select one of its parameters).

    Returns:
      the structured fields, parsed (:class:`Parsed`).

    Raises:
      ConfigError: naming the field and what it accepts (unknown keys list the valid ones).
    """
    valid = set(default_config().keys())
    unknown = sorted(set(config.keys()) - valid)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(valid))}."
        )
    _check_types(config)
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
    if config.augment == "inception" and config.input == "device":
        raise ConfigError(
            '`config.augment="inception"` crops on the host: set `input` to "stream" or "auto".'
        )
    if config.preprocess == "gcn_zca" and config.input == "stream":
        raise ConfigError(
            '`config.preprocess="gcn_zca"` transforms the whole split in memory: use "standardize" '
            'or "none" with `input="stream"`.'
        )
    parsed = Parsed(groups.parse_groups(config), profile_range(config.profile_steps))
    check_model_config(config, config.image_size or 32, parsed.groups)
    return parsed


def profile_range(text: str) -> tuple[int, int] | None:
    """``config.profile_steps`` ("A:B", 1 <= A < B) as (A, B); None for "".

    Raises:
      ConfigError: anything else, in one sentence.
    """
    if not text:
        return None
    first, _, stop = text.partition(":")
    if first.strip().isdigit() and stop.strip().isdigit() and 1 <= int(first) < int(stop):
        return int(first), int(stop)
    raise ConfigError(
        f'`config.profile_steps` must be "A:B" with whole numbers 1 <= A < B (trace steps A to '
        f'B-1), or "" for no trace; got {text!r}.'
    )


def check_model_config(
    config: ml_collections.ConfigDict, image_size: int, parsed: groups.ParamGroups | None = None
) -> None:
    """Builds the configured model and traces it on one ``image_size`` image (no compilation),
    so that a model setting it cannot use fails now, naming the setting; with ``parsed``, also
    that every group pattern selects one of the model's parameters."""
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
    kwargs = set(config.model_kwargs)
    unknown = sorted(kwargs - set(fields))
    if unknown:
        raise ConfigError(
            f"`config.model_kwargs` names {', '.join(unknown)}, which model {config.model!r} "
            f"does not have; its fields: {', '.join(fields)}."
        )
    twice = sorted(
        kwargs & {k for k in (*_MODEL_OVERRIDES, *_SET_BY_CONFIG) if config[k] is not None}
    )
    if twice:
        raise ConfigError(
            f"`config.model_kwargs` sets {', '.join(twice)}, which the config sets as "
            f"`config.{twice[0]}`; set each in one place."
        )
    derived = sorted(kwargs & {"num_classes", "dtype"})
    if derived:
        raise ConfigError(
            f"`config.model_kwargs` sets {', '.join(derived)}; the dataset gives `num_classes` "
            "and `config.compute_dtype` the `dtype`."
        )
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    try:
        model = build_model(config, num_classes=10)
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    except ValueError as err:
        raise ConfigError(
            f"model {config.model!r} cannot be built from this config (traced on "
            f"{image_size}x{image_size} images, the size `image_size` or the dataset gives): {err}"
        ) from None
    if parsed is not None:  # the names do not depend on the image or the number of classes
        groups.check_groups_match(variables["params"], parsed)


# Config fields passed to the model when set (None keeps the model's own default).
_MODEL_OVERRIDES = (
    "batch_norm",
    "dropout",
    "input_dropout",
    "downsample",
    "activation",
    "aux_logits",
)


# Config fields every model receives (the model's own `num_classes` comes from the data).
_SET_BY_CONFIG = ("width", "backend")


def build_model(config, num_classes: int):
    """The configured registry model: the config's model fields, then ``model_kwargs``."""
    overrides: dict[str, Any] = dict(num_classes=num_classes)
    overrides.update({key: config[key] for key in _SET_BY_CONFIG})
    if config.compute_dtype == "bfloat16":
        overrides["dtype"] = jnp.bfloat16
    for key in _MODEL_OVERRIDES:
        if config[key] is not None:
            overrides[key] = config[key]
    overrides.update(config.model_kwargs.to_dict())
    return models.get_model(config.model, **overrides)
