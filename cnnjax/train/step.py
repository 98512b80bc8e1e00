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
from jax import lax

from cnnjax.data import (
    Normalization,
    alternating_flips,
    apply_augment,
    augment_params,
    batch_indices,
    normalize,
)
from cnnjax.train.groups import mask

Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: a plain pytree of arrays (checkpointed as is).

    ``averages`` holds weight averages when the run keeps them: ``"slow"`` (lookahead) and
    ``"ema"``, each ``{"params", "batch_stats"}``; empty otherwise.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    averages: Any = struct.field(default_factory=dict)


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
      aux_loss_weight: weight of each auxiliary classifier's loss (the logits a model records
        in its ``aux_logits`` collection in training, GoogLeNet's two heads) in the loss.
      crop_padding: random crops after padding by this many pixels (0: no crops).
      crop_mode: the padding for crops, "zeros" or "reflect".
      flip: horizontal flips; ``flip_mode`` "random" (each image, each step) or
        "alternating" (:func:`cnnjax.data.alternating_flips`).
      total_steps: steps of the whole run (lookahead's schedule needs it); default: one epoch.
      frozen: glob patterns of parameters that get no gradient (:mod:`cnnjax.train.groups`).
      lookahead_every: airbench's lookahead every this many steps (0: off), with decay
        ``lookahead_decay ** every · (step / total)^3`` at each sync.
      ema_decay: keep an exponential moving average of the weights and evaluate with it (0: off).
      tta: test-time augmentation of :func:`eval_step` when asked for: "none", "mirror" or
        "mirror_translate".
    """

    num_classes: int
    num_train: int
    batch_size: int
    norm: Normalization
    seed: int = 0
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3
    crop_padding: int = 0
    crop_mode: str = "zeros"
    flip: bool = False
    flip_mode: str = "random"
    total_steps: int = 0
    frozen: tuple[tuple[str, float], ...] = ()
    lookahead_every: int = 0
    lookahead_decay: float = 0.95
    ema_decay: float = 0.0
    tta: str = "none"

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.batch_size

    @property
    def run_steps(self) -> int:
        return self.total_steps or self.steps_per_epoch

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
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    key,
    cfg: StepConfig | None = None,
) -> TrainState:
    """Step 0: parameters from ``model.init`` on one zero image, fresh optimiser state, and
    the weight averages ``cfg`` asks for starting at the initial weights."""
    variables = model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    weights = {"params": params, "batch_stats": batch_stats}
    averages = {}
    if cfg is not None and cfg.lookahead_every:
        averages["slow"] = weights
    if cfg is not None and cfg.ema_decay:
        averages["ema"] = weights
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        averages=averages,
    )


def variables_of(params, batch_stats) -> dict[str, Any]:
    """The Flax variable dict of a state (models without BatchNorm have no ``batch_stats``)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def batch_plan(cfg: StepConfig, step: jax.Array) -> BatchPlan:
    """Indices and augmentation draws of global batch ``step``: a pure function of (seed, step).

    Drawn for the whole global batch, so every data-parallel layout sees the same batch."""
    _, data_key, aug_key, _ = cfg.keys()
    indices = batch_indices(data_key, step, cfg.num_train, cfg.batch_size)
    random_flips = cfg.flip and cfg.flip_mode == "random"
    offsets, flips = augment_params(
        jax.random.fold_in(aug_key, step), cfg.batch_size, cfg.crop_padding, random_flips
    )
    if cfg.flip and cfg.flip_mode == "alternating":
        flips = alternating_flips(aug_key, step, indices, cfg.num_train, cfg.steps_per_epoch)
    return BatchPlan(indices, offsets, flips)


def assemble_batch(cfg: StepConfig, images, labels, plan: BatchPlan):
    """The rows of ``plan`` gathered from the dataset, normalised and augmented: (x, y)."""
    x = normalize(images[plan.indices], cfg.norm)
    x = apply_augment(x, plan.offsets, plan.flips, cfg.crop_padding, cfg.crop_mode)
    return x, labels[plan.indices]


def loss_and_grads(
    model: nn.Module, cfg: StepConfig, params, batch_stats, x, y, dropout_key
) -> tuple[Any, Any, Metrics]:
    """Gradients of the mean (label-smoothed) cross-entropy of one batch, plus
    ``cfg.aux_loss_weight`` times that of every auxiliary classifier the model has.

    Returns (grads, new BatchNorm statistics, {"loss", "accuracy"}): the loss includes the
    auxiliary terms, the accuracy is the main classifier's.
    """

    frozen = mask(params, cfg.frozen) if cfg.frozen else None

    def loss_fn(params):
        if frozen is not None:  # no gradient is computed for frozen parameters at all
            params = jax.tree.map(lambda p, f: lax.stop_gradient(p) if f else p, params, frozen)
        logits, updates = model.apply(
            variables_of(params, batch_stats),
            x,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats", "aux_logits"],
        )
        targets = optax.smooth_labels(jax.nn.one_hot(y, cfg.num_classes), cfg.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        for (aux,) in updates.get("aux_logits", {}).values():  # sow keeps a tuple per name
            aux_loss = optax.softmax_cross_entropy(aux.astype(jnp.float32), targets).mean()
            loss = loss + cfg.aux_loss_weight * aux_loss
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (accuracy, updates.get("batch_stats", batch_stats))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (accuracy, new_stats)), grads = grad_fn(params)
    return grads, new_stats, {"loss": loss, "accuracy": accuracy}


def apply_grads(
    tx: optax.GradientTransformation,
    state: TrainState,
    grads,
    batch_stats,
    cfg: StepConfig | None = None,
) -> TrainState:
    """One optimiser update: the state of step ``state.step + 1``, with the weight averages of
    ``cfg`` (lookahead, EMA) brought up to date."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    if cfg is not None and "slow" in state.averages:
        state = lookahead(state, cfg.lookahead_every, cfg.lookahead_decay, cfg.run_steps)
    if cfg is not None and "ema" in state.averages:
        state = ema_update(state, cfg.ema_decay)
    return state


def _blend(old, new, weight):
    """``old + weight · (new − old)`` leaf by leaf, in each leaf's dtype."""
    return jax.tree.map(lambda a, b: a + (weight * (b - a)).astype(a.dtype), old, new)


def lookahead(state: TrainState, every: int, decay: float, total: int) -> TrainState:
    """airbench's lookahead, after the update of step ``state.step``: every ``every`` steps the
    slow weights move towards the fast ones, ``slow += (1 − d)(fast − slow)`` with
    ``d = decay^every · (step / total)^3``, and the fast weights are reset to them; at the last
    step (``d = 1``) the fast weights become the slow ones. BatchNorm statistics too.

    Early on ``d`` is near 0, so the slow weights simply follow; towards the end they average
    over a widening window, which is what makes the short schedule's final weights good.
    """
    step = state.step
    fast = {"params": state.params, "batch_stats": state.batch_stats}
    sync = (step % every == 0) | (step >= total)
    d = jnp.where(step >= total, 1.0, decay**every * (step / total) ** 3)
    slow = _blend(state.averages["slow"], fast, jnp.where(sync, 1.0 - d, 0.0))
    fast = jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast)
    return state.replace(
        params=fast["params"],
        batch_stats=fast["batch_stats"],
        averages={**state.averages, "slow": slow},
    )


def ema_update(state: TrainState, decay: float) -> TrainState:
    """``ema ← decay · ema + (1 − decay) · weights`` (parameters and BatchNorm statistics)."""
    weights = {"params": state.params, "batch_stats": state.batch_stats}
    ema = _blend(state.averages["ema"], weights, 1.0 - decay)
    return state.replace(averages={**state.averages, "ema": ema})


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
    return apply_grads(tx, state, grads, batch_stats, cfg), metrics


def tta_logits(apply: Callable[[jax.Array], jax.Array], x: jax.Array, tta: str) -> jax.Array:
    """Logits of ``x`` (N, H, W, C) averaged over test-time views, as airbench weights them.

    "none": ``x`` alone. "mirror": ``x`` and its mirror image, ½ each. "mirror_translate":
    ½ × mirror(x) + ½ × the mean of mirror(x shifted one pixel up-left) and mirror(x shifted one
    pixel down-right), the shifts over reflect padding: 6 views in all. "translate": the same
    without the mirror images, for runs trained on crops without flips: 3 views.
    """
    if tta == "none":
        return apply(x)
    mirror = lambda v: 0.5 * apply(v) + 0.5 * apply(v[:, :, ::-1])
    if tta == "mirror":
        return mirror(x)
    view = mirror if tta == "mirror_translate" else apply
    _, h, w, _ = x.shape
    padded = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    shifted = [padded[:, :h, :w], padded[:, 2 : h + 2, 2 : w + 2]]
    return 0.5 * view(x) + 0.25 * (view(shifted[0]) + view(shifted[1]))


_VIEWS = {(True, True): "mirror_translate", (True, False): "mirror", (False, True): "translate"}


def default_tta(flip: bool, crop_padding: int) -> str:
    """The test-time views a run's training augmentation made: mirror images only when it
    flipped, shifted views only when it cropped ("none" when it did neither)."""
    return _VIEWS.get((flip, crop_padding > 0), "none")


def unseen_views(tta: str, flip: bool, crop_padding: int) -> str | None:
    """A sentence when ``tta`` averages views the training never made (None otherwise)."""
    unseen = []
    if "mirror" in tta and not flip:
        unseen.append("mirror images (it trained without flips)")
    if "translate" in tta and crop_padding == 0:
        unseen.append("shifted images (it trained without crops)")
    if not unseen:
        return None
    return (
        f"test-time augmentation {tta!r} averages {' and '.join(unseen)}, which this run never "
        f"saw; its own views would be {default_tta(flip, crop_padding)!r}."
    )


def eval_step(
    state: TrainState, images, labels, *, model: nn.Module, cfg: StepConfig, tta: str = "none"
) -> Metrics:
    """Summed loss, correct predictions (top-1, and top-5 with more than 5 classes) and count
    of a padded batch; labels < 0 are padding.

    Uses the EMA weights when the run keeps them, and ``tta`` views (:func:`tta_logits`)."""
    weights = state.averages.get("ema", {"params": state.params, "batch_stats": state.batch_stats})
    variables = variables_of(weights["params"], weights["batch_stats"])
    x = normalize(images, cfg.norm)
    logits = tta_logits(lambda v: model.apply(variables, v), x, tta)
    valid = labels >= 0
    y = jnp.maximum(labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    sums = {
        "loss": jnp.sum(jnp.where(valid, losses, 0.0)),
        "correct": jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == y, False)),
        "count": jnp.sum(valid),
    }
    if logits.shape[-1] > 5:
        # In the top 5 when fewer than 5 classes score strictly higher (ties count for the label).
        rank = jnp.sum(logits > jnp.take_along_axis(logits, y[:, None], -1), axis=-1)
        sums["correct_top5"] = jnp.sum(jnp.where(valid, rank < 5, False))
    return sums


def eval_means(totals: dict[str, Any]) -> dict[str, float]:
    """Mean loss, accuracy and (where counted) top-5 accuracy from the summed ``eval_step``
    metrics of a whole split."""
    count = max(int(totals["count"]), 1)
    means = {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}
    if "correct_top5" in totals:
        means["top5_accuracy"] = float(totals["correct_top5"]) / count
    return means


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
    eval_tta: Callable[..., Metrics]  # the same with cfg.tta's views


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
        init=functools.partial(init_state, model, tx, image_shape, cfg.keys()[0], cfg),
        train=functools.partial(train_step, model=model, tx=tx, schedule=schedule, cfg=cfg),
        eval=functools.partial(eval_step, model=model, cfg=cfg),
        eval_tta=functools.partial(eval_step, model=model, cfg=cfg, tta=cfg.tta),
    )
