"""Train state and the jit-compiled init, train and eval steps (shapes, then shardings, then jit).

The input pipeline lives inside the train step: it gathers batch ``step`` of an epoch-wise
permutation from the device-resident dataset, normalises and augments it, all keyed by
(seed, step). Nothing about a step depends on host state, so a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from cnnjax import parallel
from cnnjax.data import Normalization, apply_augment, augment_params, batch_indices, normalize


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: a plain pytree of arrays (checkpointed as is)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


class Trainer:
    """Compiled steps for one model, optimiser, dataset geometry and device mesh."""

    def __init__(
        self,
        model: nn.Module,
        tx: optax.GradientTransformation,
        schedule: optax.Schedule,
        norm: Normalization,
        *,
        num_classes: int,
        image_shape: tuple[int, ...],
        num_train: int,
        batch_size: int,
        mesh: Mesh,
        seed: int = 0,
        label_smoothing: float = 0.0,
        crop_padding: int = 0,
        flip: bool = False,
    ):
        parallel.check_global_batch(batch_size, mesh.size)
        if num_train < batch_size:
            raise ValueError(
                f"`batch_size`={batch_size} is larger than the training split ({num_train})."
            )
        self.model, self.tx, self.schedule, self.norm = model, tx, schedule, norm
        self.num_classes, self.image_shape = num_classes, tuple(image_shape)
        self.num_train, self.batch_size, self.mesh = num_train, batch_size, mesh
        self.label_smoothing, self.crop_padding, self.flip = label_smoothing, crop_padding, flip
        self.steps_per_epoch = num_train // batch_size
        keys = jax.random.split(jax.random.key(seed), 4)
        self._init_key, self._data_key, self._aug_key, self._dropout_key = keys
        self.replicated = parallel.replicated(mesh)
        self.batch_sharding = parallel.batch_sharded(mesh)

        self._compile()

    def _compile(self) -> None:
        """Shapes first, then shardings, then jit (the train state is donated)."""
        abstract = jax.eval_shape(self._init)
        self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
        options = parallel.compiler_options(self.mesh.devices.flat[0].platform)
        self.init_state = jax.jit(self._init, out_shardings=self.state_sharding)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, self.replicated, self.replicated),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=(0,),
            compiler_options=options,
        )
        self.eval_step = jax.jit(
            self._eval_step,
            in_shardings=(self.state_sharding, self.batch_sharding, self.batch_sharding),
            out_shardings=self.replicated,
            compiler_options=options,
        )

    # -- pure functions ---------------------------------------------------------------------
    def _init(self) -> TrainState:
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        variables = self.model.init({"params": self._init_key}, x, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
        )

    def _variables(self, params, batch_stats):
        return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}

    def loss_and_updates(self, params, batch_stats, x, y, dropout_key):
        """Mean (label-smoothed) cross-entropy of a training batch, with new BatchNorm stats."""
        logits, updates = self.model.apply(
            self._variables(params, batch_stats),
            x,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        targets = optax.smooth_labels(jax.nn.one_hot(y, self.num_classes), self.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (accuracy, updates.get("batch_stats", batch_stats))

    def batch(self, step, images, labels, part=None):
        """Training batch ``step``: gathered, normalised and augmented on the device.

        Indices and augmentation draws are made for the global batch; ``part`` = (index,
        count) takes one device's share of them (the pmap path), otherwise the indices are
        sharded over the mesh and each device gathers only its rows.
        """
        idx = batch_indices(self._data_key, step, self.num_train, self.batch_size)
        aug_key = jax.random.fold_in(self._aug_key, step)
        offsets, flips = augment_params(aug_key, self.batch_size, self.crop_padding, self.flip)
        if part is None:
            idx = jax.lax.with_sharding_constraint(idx, self.batch_sharding)
        else:
            i, count = part
            size = self.batch_size // count
            idx, offsets, flips = (
                jax.lax.dynamic_slice_in_dim(a, i * size, size) for a in (idx, offsets, flips)
            )
        x = apply_augment(normalize(images[idx], self.norm), offsets, flips, self.crop_padding)
        return x, labels[idx]

    def _train_step(self, state: TrainState, images, labels, axis_name: str | None = None):
        """One optimiser step on batch ``state.step``.

        With ``axis_name`` (inside ``jax.pmap``) each device takes its share of the global
        batch, and gradients, metrics and BatchNorm statistics are averaged over the axis.
        """
        part, dropout_key = None, jax.random.fold_in(self._dropout_key, state.step)
        mean = lambda tree: tree
        if axis_name is not None:
            i = jax.lax.axis_index(axis_name)
            part, dropout_key = (
                (i, jax.lax.axis_size(axis_name)),
                jax.random.fold_in(dropout_key, i),
            )
            mean = lambda tree: jax.lax.pmean(tree, axis_name)
        x, y = self.batch(state.step, images, labels, part)
        grad_fn = jax.value_and_grad(self.loss_and_updates, has_aux=True)
        (loss, (accuracy, batch_stats)), grads = grad_fn(
            state.params, state.batch_stats, x, y, dropout_key
        )
        grads, batch_stats = mean(grads), mean(batch_stats)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        metrics = mean({"loss": loss, "accuracy": accuracy})
        metrics["learning_rate"] = self.schedule(state.step)
        return new_state, metrics

    def _eval_step(self, state: TrainState, images, labels):
        """Sums over a padded batch; labels < 0 mark padding."""
        x = normalize(images, self.norm)
        logits = self.model.apply(self._variables(state.params, state.batch_stats), x)
        mask = labels >= 0
        y = jnp.maximum(labels, 0)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return {
            "loss": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == y, False)),
            "count": jnp.sum(mask),
        }

    # -- host-side helpers -------------------------------------------------------------------
    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def step_of(self, state: TrainState) -> jax.Array:
        return state.step

    def params_of(self, state: TrainState) -> Any:
        return state.params

    def put_dataset(self, images, labels):
        """The training split, resident on every device (gathered per step inside jit)."""
        return (
            parallel.to_global(images, self.replicated),
            parallel.to_global(labels, self.replicated),
        )

    def checkpointable(self, state: TrainState) -> TrainState:
        """The state as it is saved (the jit path saves the global arrays as they are)."""
        return state

    def from_checkpoint(self, state: TrainState) -> TrainState:
        return state

    def _eval_batch(self, state, images, labels):
        return self.eval_step(
            state,
            parallel.to_global(images, self.batch_sharding),
            parallel.to_global(labels, self.batch_sharding),
        )

    def evaluate(self, state: TrainState, images, labels, batch_size: int) -> dict[str, float]:
        """Loss and accuracy over a whole split, in padded batches of ``batch_size``."""
        devices = self.mesh.size
        batch_size = max(devices, batch_size // devices * devices)
        totals = {"loss": 0.0, "correct": 0, "count": 0}
        for start in range(0, len(labels), batch_size):
            xb = images[start : start + batch_size]
            yb = np.asarray(labels[start : start + batch_size], np.int32)
            pad = batch_size - len(yb)
            if pad:
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
                yb = np.concatenate([yb, -np.ones(pad, np.int32)])
            out = self._eval_batch(state, xb, yb)
            for k, v in jax.device_get(out).items():
                totals[k] += v
        count = max(int(totals["count"]), 1)
        return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}
