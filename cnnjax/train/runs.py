"""Reading finished (or interrupted) runs back: their config, state and accuracy."""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import ml_collections

from cnnjax.data import Normalization, load_image_folder
from cnnjax.data import stream as streaming
from cnnjax.errors import ConfigError
from cnnjax.train.build import build_engine, load_data, stream_spec
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import default_config
from cnnjax.train.engine import evaluate as evaluate_split
from cnnjax.train.feed import evaluate_stream
from cnnjax.train.step import default_tta, unseen_views
from cnnjax.train.workdir import CONFIG_REMEDY, load_data_info, read_json


def load_run(
    workdir: str,
    *,
    step: int | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    tta: str | None = None,
    split: str | None = None,
    input: str | None = None,
):
    """A run rebuilt from its ``config.json`` and checkpoint (latest, or ``step``).

    Returns ``(config, engine, state, data)`` with ``state`` as checkpoints hold it (one copy,
    whatever the run's parallel layout); ``tta`` overrides the run's test-time augmentation.
    ``dataset``/``data_dir`` swap the data (same image shape); an image folder is then read
    with the run's class names and normalisation (its ``data.json``), so it needs no training
    split: ``split`` alone is read when given. ``input``: "device" (decoded in memory) or
    "stream" (a :class:`cnnjax.data.stream.StreamDataset`); default: how the run trained.
    The steps always normalise with the run's own statistics (``data.json``).
    """
    config = saved_config(workdir)
    info = load_data_info(workdir)
    trained = (info or {}).get("input", "device")
    input = input or trained
    swapped = dataset is not None or data_dir is not None
    config.dataset = config.dataset if dataset is None else dataset
    config.data_dir = config.data_dir if data_dir is None else data_dir
    if tta is not None:
        config.tta = tta
    if swapped and config.dataset == "imagefolder" and info is not None and input == "device":
        data, norm = _evaluation_folder(config, info, split)
    else:
        data, norm = load_data(config, input)
    if info is not None:
        norm = Normalization(
            info["norm"]["scale"], *(tuple(info["norm"][k]) for k in ("mean", "std"))
        )
    engine = build_engine(config, data, norm)
    directory, keep = os.path.join(workdir, "checkpoints"), config.keep_checkpoints
    with Checkpoints(directory, keep, with_input=trained == "stream") as ckpts:
        state = ckpts.restore(engine.saved(engine.init()), step)
    return config, engine, state, data


def _evaluation_folder(config, info: dict, split: str | None):
    """An image folder read for evaluating a run: only ``split`` (if given), labels in the
    run's class order, the run's normalisation."""
    if config.preprocess == "gcn_zca":
        raise ConfigError(
            "this run's preprocessing (gcn_zca) was fitted on its training split and is not "
            "stored with it; evaluate it on its own dataset."
        )
    data = load_image_folder(
        config.data_dir,
        image_size=config.image_size,
        val_fraction=0.0,
        cache_dir=None if config.data_cache else "",
        skip_bad=config.skip_bad_images,
        splits=None if split is None else [split],
        classes=info["class_names"] or None,
        channels=info["image_shape"][-1],
    )
    if data.num_classes != info["num_classes"] and not info["class_names"]:
        raise ConfigError(
            f"{config.data_dir} has {data.num_classes} classes and the run was trained on "
            f"{info['num_classes']}; evaluate it on data with the same classes."
        )
    norm = info["norm"]
    data.num_classes = info["num_classes"]
    return data, Normalization(norm["scale"], tuple(norm["mean"]), tuple(norm["std"]))


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was started with (its ``config.json``), on top of today's defaults."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: is {workdir!r} the workdir of a run?")
    saved = read_json(path, CONFIG_REMEDY)
    config = default_config()
    config.update(ml_collections.ConfigDict(_tuples(saved)))
    return config


def evaluate_checkpoint(
    workdir: str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    step: int | None = None,
    tta: bool = False,
    input: str | None = None,
) -> dict[str, Any]:
    """Accuracy of a run's checkpoint (latest, or ``step``) on any dataset split.

    ``split`` defaults to ``test`` when the dataset has one, else ``validation``. ``tta``:
    also with test-time augmentation: the run's ``tta`` views, or when it set none the views
    its training augmentation made (:func:`cnnjax.train.default_tta`: no mirror images for a
    run trained without flips). ``input``: "device" or "stream" (default: how the run trained).
    """
    saved = saved_config(workdir)
    views = default_tta(saved.flip, saved.crop_padding) if tta and saved.tta == "none" else None
    config, engine, state, data = load_run(
        workdir, step=step, dataset=dataset, data_dir=data_dir, tta=views, split=split, input=input
    )
    split = split or ("test" if "test" in data.splits else "validation")
    if split not in data.splits:
        raise ConfigError(f"`split` must be one of {sorted(data.splits)}, got {split!r}.")
    s, state = data.splits[split], engine.restored(state)
    if isinstance(data, streaming.StreamDataset):
        spec, size = stream_spec(config, data, split), config.eval_batch_size
        evaluate = lambda state, tta=False: evaluate_stream(engine, state, s, spec, size, tta)
    else:
        evaluate = lambda state, tta=False: evaluate_split(
            engine, state, s.images, s.labels, config.eval_batch_size, tta
        )
    m = evaluate(state)
    out = {
        "workdir": workdir,
        "dataset": config.dataset,
        "split": split,
        "step": int(jax.device_get(engine.saved(state).step)),
        "examples": len(s),
        **m,
    }
    if tta:
        note = unseen_views(config.tta, config.flip, config.crop_padding)
        if note:
            warnings.warn(note, stacklevel=2)
        m = evaluate(state, tta=True)
        out["tta"], out["tta_accuracy"] = config.tta, m["accuracy"]
    return out


def _tuples(d):
    """JSON turns tuples into lists; the config's tuple fields want tuples back."""
    if isinstance(d, dict):
        return {k: _tuples(v) for k, v in d.items()}
    if isinstance(d, list):
        return tuple(d)
    return d
