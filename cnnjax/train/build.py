"""From a config to the objects of a run: data, model, optimiser, compiled steps.

:func:`build_engine` is the one place a run's steps are put together; the training loop, the
readers of finished runs and the benchmark programs all call it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cnnjax import parallel
from cnnjax.data import (
    Dataset,
    Normalization,
    Split,
    folders,
    load_dataset,
    normalize,
    patch_whitening,
    preprocess,
    standardization,
    subset_indices,
)
from cnnjax.data import stream as streaming
from cnnjax.errors import ConfigError
from cnnjax.train import groups
from cnnjax.train.config import build_model, check_model_config
from cnnjax.train.engine import Engine, mesh_engine
from cnnjax.train.optim import check_groups, make_optimizer, total_steps
from cnnjax.train.step import StepConfig, make_step_fns


def choose_input(config) -> tuple[str, str]:
    """Where a run's batches come from, "device" or "stream", and why (for the run's log).

    ``input="auto"`` streams when ``augment`` needs the host or the decoded training split
    would take more than ``device_data_gb`` on each device (estimated from the number of
    training examples and the image size, without decoding anything)."""
    if config.input != "auto":
        return config.input, f"`input={config.input}`"
    if config.augment != "crop_flip":
        return "stream", f"`augment={config.augment}` crops on the host"
    size = _decoded_bytes(config)
    budget = config.device_data_gb * 2**30
    if size is None:
        return "stream", "the image size is unknown until decoded; set `image_size`"
    verdict = "over" if size > budget else "within"
    reason = (
        f"the decoded training split takes about {_gb(size)} per device, {verdict} "
        f"`device_data_gb={config.device_data_gb:g}`"
    )
    return ("stream" if size > budget else "device"), reason


def _decoded_bytes(config, train_only: bool = True) -> int | None:
    """Bytes of the decoded (uint8) training split (``train_only``) or of every split, from
    the number of examples and the image size, or None when the size is unknown."""
    if config.dataset == "digits":
        size = config.image_size or 32
        return streaming.split_bytes(1797, (size, size, 1))
    if config.dataset == "imagefolder":
        index = folders.index_folder(config.data_dir, skip_bad=config.skip_bad_images)
        train = index.files.get("train") or next(iter(index.files.values()))
        count = len(train) if train_only else sum(map(len, index.files.values()))
        size = config.image_size
        if size is None:
            first = folders.open_image(os.path.join(index.root, train[0][0]))
            return streaming.split_bytes(count, (first.height, first.width, 3))
        return streaming.split_bytes(count, (size, size, 3))
    from cnnjax.data.sources import _tensorflow

    _tensorflow()
    import tensorflow_datasets as tfds

    try:
        info = tfds.builder(config.dataset, data_dir=config.data_dir).info
        counts = {name: split.num_examples for name, split in info.splits.items()}
        count = counts["train"] if train_only else sum(counts.values())
    except Exception:  # unknown, unprepared or without train: the loader says what to do
        return 0
    shape = info.features["image"].shape
    if config.image_size:
        shape = (config.image_size, config.image_size, shape[-1])
    return None if None in shape else streaming.split_bytes(count, shape)


def _gb(size: int) -> str:
    return f"{size / 2**30:.2f} GB" if size >= 2**30 else f"{size / 2**20:.1f} MB"


def _available_memory() -> int | None:
    """Bytes of memory the system can still give this process (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits_in_memory(config) -> None:
    """Refuses, before anything is decoded, a dataset whose decoded splits would take more
    than 80 % of the memory the system has available (``input="device"`` decodes them all
    into memory: float32, four times as much, after ``gcn_zca``)."""
    size, available = _decoded_bytes(config, train_only=False), _available_memory()
    if not size or available is None:
        return
    size *= 4 if config.preprocess == "gcn_zca" else 1
    if size > 0.8 * available:
        raise ConfigError(
            f"decoding {config.dataset!r} into memory would take about {_gb(size)}, more than "
            f"the {_gb(available)} this machine has available: set a smaller `image_size` (now "
            f'{config.image_size}), or `input="stream"` to read it batch by batch.'
        )


def load_data(config, input: str = "device") -> tuple[Dataset, Normalization]:
    """The configured dataset and the normalisation the steps apply: decoded in memory
    (``input="device"``), or as sources to stream (a :class:`cnnjax.data.stream.StreamDataset`
    whose ``"standardize"`` statistics come from :data:`NORM_SAMPLE` training images, or all
    of an in-memory split, as on the device path)."""
    if input == "stream":
        return _load_stream(config)
    check_fits_in_memory(config)
    dataset = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
        download=config.download,
        cache=config.data_cache,
        skip_bad=config.skip_bad_images,
    )
    if config.train_fraction < 1.0 and "train" in dataset.splits:
        train = dataset.splits["train"]
        keep = subset_indices(len(train), config.train_fraction, config.split_seed)
        dataset.splits["train"] = Split(train.images[keep], train.labels[keep])
    return preprocess(dataset, config.preprocess)


NORM_SAMPLE = 1000  # streamed image folders and TFDS: images the statistics are estimated on


def _load_stream(config) -> tuple[streaming.StreamDataset, Normalization]:
    data = streaming.open_stream(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
        train_fraction=config.train_fraction,
        skip_bad=config.skip_bad_images,
    )
    if config.preprocess == "none":
        channels = data.channels
        return data, Normalization(1.0 / 255.0, (0.0,) * channels, (1.0,) * channels)
    train = data.splits.get("train")
    if train is None:
        raise ConfigError(f"{data.name} has no training split to estimate `preprocess` on.")
    if isinstance(train, streaming.ArraySource):
        return data, standardization(train.images)
    sample = streaming.sample_images(
        train, NORM_SAMPLE, config.split_seed, stream_spec(config, data)
    )
    return data, standardization(sample)


def stream_spec(
    config, data: streaming.StreamDataset, split: str = "train"
) -> streaming.StreamSpec:
    """The batches ``config`` asks of ``data``'s ``split``."""
    return streaming.StreamSpec(
        num_examples=len(data.splits[split]) if split in data.splits else config.batch_size,
        batch_size=config.batch_size,
        seed=config.seed,
        image_size=data.image_size,
        augment=config.augment,
        crop_padding=config.crop_padding,
        crop_mode=config.crop_mode,
        flip=config.flip,
        flip_mode=config.flip_mode,
        resize=data.resize,
        skip_bad=config.skip_bad_images,
    )


def build_engine(
    config,
    dataset: Dataset,
    norm: Normalization,
    mesh: Mesh | None = None,
    parsed: groups.ParamGroups | None = None,
) -> Engine:
    """The compiled steps of ``config`` on ``dataset``: over a device mesh (``parallel="jit"``,
    the default) or under ``jax.pmap`` (``parallel="pmap"``). ``parsed``: the config's
    parameter groups as :func:`cnnjax.train.validate_config` returned them (parsed here when
    not given)."""
    mesh = mesh or parallel.make_mesh(config.num_devices)
    parsed = parsed or groups.parse_groups(config)
    # A dataset without a training split is one to evaluate on: one batch stands in for it.
    num_train = len(dataset.splits["train"]) if "train" in dataset.splits else config.batch_size
    if num_train < config.batch_size:
        raise ConfigError(
            f"`batch_size`={config.batch_size} is larger than the training split ({num_train})."
        )
    steps_per_epoch = num_train // config.batch_size
    cfg = StepConfig(
        num_classes=dataset.num_classes,
        num_train=num_train,
        batch_size=config.batch_size,
        norm=norm,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        aux_loss_weight=config.aux_loss_weight,
        crop_padding=config.crop_padding,
        crop_mode=config.crop_mode,
        flip=config.flip,
        flip_mode=config.flip_mode,
        total_steps=total_steps(config, steps_per_epoch),
        frozen=parsed.frozen,
        lookahead_every=config.lookahead_every,
        lookahead_decay=config.lookahead_decay,
        ema_decay=config.ema_decay,
        tta=config.tta,
    )
    if config.image_size is None:  # validate_config checked the size it asks for
        check_model_config(config, min(dataset.image_shape[:2]))
    tx, schedule = make_optimizer(config, steps_per_epoch, cfg.total_steps, parsed)
    model = build_model(config, dataset.num_classes)
    fns = make_step_fns(model, tx, schedule, cfg, dataset.image_shape)
    check_groups(config, parsed, jax.eval_shape(fns.init).params)
    if config.parallel == "pmap":
        from cnnjax.train.pmap import pmap_engine

        return pmap_engine(fns, mesh.devices.flat)
    return mesh_engine(fns, mesh)


def initial_state(config, engine: Engine, dataset: Dataset, norm: Normalization):
    """Step 0 of a fresh run on the devices; with ``patch_whitening`` the model's first
    convolution (and its copies in the weight averages) set from the training images."""
    state = engine.init()
    if not config.patch_whitening:
        return state
    host = jax.device_get(engine.saved(state))
    path = _first_conv_kernel(config, engine)
    kernel = host.params
    for name in path:
        kernel = kernel[name]
    train = dataset.splits["train"]
    # A fixed-seed sample: the split's order may be sorted by class.
    if isinstance(train, Split):
        rows = np.random.default_rng(config.seed).permutation(len(train))
        sample = train.images[np.sort(rows[: config.whitening_images])]
    else:  # the same rows, decoded from the stream's source
        spec = stream_spec(config, dataset)
        sample = streaming.sample_images(train, config.whitening_images, config.seed, spec)
    images = np.asarray(normalize(sample, norm))
    whitening = patch_whitening(images, kernel.shape[:2], config.whitening_eps)
    if whitening.shape != kernel.shape:
        raise ConfigError(
            f"`config.patch_whitening` sets the first convolution ({'/'.join(path)}, kernel "
            f"{kernel.shape}) to {whitening.shape[-1]} whitening filters of "
            f"{whitening.shape[:3]} patches; model {config.model!r}'s first convolution must "
            f"have {whitening.shape[-1]} output channels."
        )
    set_kernel = lambda params: _replace_at(params, path, whitening)
    averages = {name: {**w, "params": set_kernel(w["params"])} for name, w in host.averages.items()}
    host = host.replace(params=set_kernel(host.params), averages=averages)
    return engine.restored(host)


def _first_conv_kernel(config, engine: Engine) -> tuple[str, ...]:
    """The parameter path of the first convolution kernel (rank 4) the model creates."""

    # Flax's init returns parameters in creation order, but whatever flattens them (jit's and
    # eval_shape's outputs, jax.tree) sorts the keys: the order is read inside the traced
    # function, from abstract values (running init eagerly took 17 s for airbench94 on a CPU).
    def walk(tree, path):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, (*path, key))
            else:
                yield (*path, key), value

    created: list[tuple[tuple[str, ...], int]] = []

    def init(x):
        params = engine.fns.model.init(jax.random.key(0), x)["params"]
        created.extend((names, leaf.ndim) for names, leaf in walk(params, ()))
        return params

    jax.eval_shape(init, jax.ShapeDtypeStruct((1, *engine.fns.image_shape), jnp.float32))
    for names, ndim in created:
        if ndim == 4 and names[-1] == "kernel":
            return names
    raise ConfigError(
        f"`config.patch_whitening` needs a first convolution to set, and model "
        f"{config.model!r} has no convolution kernel."
    )


def _replace_at(tree: dict, path: tuple[str, ...], value) -> dict:
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _replace_at(tree[path[0]], path[1:], value)}
