"""From a config to the objects of a run: data, model, optimiser, compiled steps.

:func:`build_engine` is the one place a run's steps are put together; the training loop, the
readers of finished runs and the benchmark programs all call it.
"""

from __future__ import annotations

from jax.sharding import Mesh

from cnnjax import parallel
from cnnjax.data import Dataset, Normalization, load_dataset, preprocess
from cnnjax.errors import ConfigError
from cnnjax.train.config import build_model, check_model_config
from cnnjax.train.engine import Engine, mesh_engine
from cnnjax.train.optim import make_optimizer
from cnnjax.train.step import StepConfig, make_step_fns


def load_data(config) -> tuple[Dataset, Normalization]:
    """The configured dataset, preprocessed, and the normalisation the steps apply."""
    dataset = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        download=config.download,
    )
    return preprocess(dataset, config.preprocess)


def build_engine(config, dataset: Dataset, norm: Normalization, mesh: Mesh | None = None) -> Engine:
    """The compiled steps of ``config`` on ``dataset``: over a device mesh (``parallel="jit"``,
    the default) or under ``jax.pmap`` (``parallel="pmap"``)."""
    mesh = mesh or parallel.make_mesh(config.num_devices)
    num_train = len(dataset.splits["train"])
    if num_train < config.batch_size:
        raise ConfigError(
            f"`batch_size`={config.batch_size} is larger than the training split ({num_train})."
        )
    cfg = StepConfig(
        num_classes=dataset.num_classes,
        num_train=num_train,
        batch_size=config.batch_size,
        norm=norm,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        crop_padding=config.crop_padding,
        flip=config.flip,
    )
    if config.image_size is None:  # validate_config checked the size it asks for
        check_model_config(config, min(dataset.image_shape[:2]))
    tx, schedule = make_optimizer(config, cfg.steps_per_epoch)
    model = build_model(config, dataset.num_classes)
    fns = make_step_fns(model, tx, schedule, cfg, dataset.image_shape)
    if config.parallel == "pmap":
        from cnnjax.train.pmap import pmap_engine

        return pmap_engine(fns, mesh.devices.flat)
    return mesh_engine(fns, mesh)
