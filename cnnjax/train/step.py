"""The train and eval steps as pure functions: data in, data out.

Every function takes what it uses as explicit arguments (the Flax module, the optax
transformation, the learning-rate schedule and a :class:`StepConfig` of hyperparameters) and
the :class:`TrainState` as the only state; :func:`make_step_fns` binds those arguments once
with ``functools.partial``. Nothing here knows about devices: :mod:`cnnjax.train.engine`
compiles the pieces for a device mesh and :mod:`cnnjax.train.pmap` composes them under
``jax.pmap``.

The input pipeline is part of the step: batch ``state.step`` of an epoch-wise permutation is
gathered from the device-resident dataset, normalised and augmented, all keyed by
(seed, step), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from cnnjax.data import Normalization, apply_augment, augment_params, batch_indices, normalize

Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: a plain pytree of arrays (checkpointed as is)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What a step needs besides the model and the optimiser (frozen: set once per run).

    Attributes:
      num_classes: classes of the labels (for one-hot targets).
      num_train: examples in the training split; an epoch is ``num_train // batch_size``
        batches of a fresh permutation (the remainder is dropped).
      batch_size: the global batch, over all devices.
      norm: per-channel normalisation applied to the uint8 (or float) images.
      seed: every random draw (initialisation, batch order, augmentation, dropout) derives
        from it and the step number.
      label_smoothing: mass moved from the true class to all classes, in [0, 1).
      crop_padding: random crops after zero padding by this many pixels (0: no crops).
      flip: random horizontal flips.
    """

    num_classes: int
    num_train: int
    batch_size: int
    norm: Normalization
    seed: int = 0
    label_smoothing: float = 0.0
    crop_padding: int = 0
    flip: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.batch_size

    def keys(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(init, batch order, augmentation, dropout) keys of the run."""
        init, data, aug, dropout = jax.random.split(jax.random.key(self.seed), 4)
        return init, data, aug, dropout


class BatchPlan(NamedTuple):
    """Which examples make a global batch and how each is augmented (all (B, ...) arrays)."""

    indices: jax.Array  # (B,) int32 rows of the training split
    offsets: jax.Array  # (B, 2) crop offsets
    flips: jax.Array  # (B,) bool


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...], key
) -> TrainState:
    """Step 0: parameters from ``model.init`` on one zero image, fresh optimiser state."""
    variables = model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def variables_of(params, batch_stats) -> dict[str, Any]:
    """The Flax variable dict of a state (models without BatchNorm have no ``batch_stats``)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def batch_plan(cfg: StepConfig, step: jax.Array) -> BatchPlan:
    """Indices and augmentation draws of global batch ``step``: a pure function of (seed, step).

    Drawn for the whole global batch, so every data-parallel layout sees the same batch."""
    _, data_key, aug_key, _ = cfg.keys()
    indices = batch_indices(data_key, step, cfg.num_train, cfg.batch_size)
    offsets, flips = augment_params(
        jax.random.fold_in(aug_key, step), cfg.batch_size, cfg.crop_padding, cfg.flip
    )
    return BatchPlan(indices, offsets, flips)


def assemble_batch(cfg: StepConfig, images, labels, plan: BatchPlan):
    """The rows of ``plan`` gathered from the dataset, normalised and augmented: (x, y)."""
    x = normalize(images[plan.indices], cfg.norm)
    return apply_augment(x, plan.offsets, plan.flips, cfg.crop_padding), labels[plan.indices]


def loss_and_grads(
    model: nn.Module, cfg: StepConfig, params, batch_stats, x, y, dropout_key
) -> tuple[Any, Any, Metrics]:
    """Gradients of the mean (label-smoothed) cross-entropy of one batch.

    Returns (grads, new BatchNorm statistics, {"loss", "accuracy"}).
    """

    def loss_fn(params):
        logits, updates = model.apply(
            variables_of(params, batch_stats),
            x,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        targets = optax.smooth_labels(jax.nn.one_hot(y, cfg.num_classes), cfg.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (accuracy, updates.get("batch_stats", batch_stats))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (accuracy, new_stats)), grads = grad_fn(params)
    return grads, new_stats, {"loss": loss, "accuracy": accuracy}


def apply_grads(tx: optax.GradientTransformation, state: TrainState, grads, batch_stats):
    """One optimiser update: the state of step ``state.step + 1``."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


def train_step(
    state: TrainState,
    x,
    y,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: StepConfig,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on the batch (x, y); metrics include the step's learning rate."""
    dropout_key = jax.random.fold_in(cfg.keys()[3], state.step)
    grads, batch_stats, metrics = loss_and_grads(
        model, cfg, state.params, state.batch_stats, x, y, dropout_key
    )
    metrics["learning_rate"] = schedule(state.step)
    return apply_grads(tx, state, grads, batch_stats), metrics


def eval_step(state: TrainState, images, labels, *, model: nn.Module, cfg: StepConfig) -> Metrics:
    """Summed loss, correct predictions and count of a padded batch; labels < 0 are padding."""
    logits = model.apply(variables_of(state.params, state.batch_stats), normalize(images, cfg.norm))
    mask = labels >= 0
    y = jnp.maximum(labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return {
        "loss": jnp.sum(jnp.where(mask, losses, 0.0)),
        "correct": jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == y, False)),
        "count": jnp.sum(mask),
    }


class StepFns(NamedTuple):
    """The pure functions of one run, with model, optimiser and hyperparameters bound."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    cfg: StepConfig
    image_shape: tuple[int, ...]
    init: Callable[[], TrainState]
    train: Callable[..., tuple[TrainState, Metrics]]  # (state, x, y)
    eval: Callable[..., Metrics]  # (state, images, labels)


def make_step_fns(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: StepConfig,
    image_shape: tuple[int, ...],
) -> StepFns:
    """Binds ``model``, ``tx``, ``schedule`` and ``cfg`` into the init, train and eval steps."""
    image_shape = tuple(image_shape)
    return StepFns(
        model=model,
        tx=tx,
        schedule=schedule,
        cfg=cfg,
        image_shape=image_shape,
        init=functools.partial(init_state, model, tx, image_shape, cfg.keys()[0]),
        train=functools.partial(train_step, model=model, tx=tx, schedule=schedule, cfg=cfg),
        eval=functools.partial(eval_step, model=model, cfg=cfg),
    )
