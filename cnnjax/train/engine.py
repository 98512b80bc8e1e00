"""The steps of a run compiled for its devices: shapes first, then shardings, then jit.

An :class:`Engine` is what the training loop drives. :func:`mesh_engine` builds the default
one (``jax.jit`` over a ``("data",)`` mesh: the batch is split over the devices, the state is
replicated and donated, XLA inserts the gradient all-reduce);
:func:`cnnjax.train.pmap.pmap_engine` builds the classic ``jax.pmap`` one from the same pure
functions.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from cnnjax import parallel
from cnnjax.data import apply_augment, normalize
from cnnjax.train.step import (
    StepConfig,
    StepFns,
    TrainState,
    assemble_batch,
    batch_plan,
    eval_means,
)


@dataclasses.dataclass(frozen=True)
class Engine:
    """Compiled steps and the few device-layout facts the loop needs.

    Attributes:
      fns: the pure functions the engine was compiled from.
      num_devices: devices one step runs on.
      init: () -> the initial state, on the devices.
      train_step: (state, images, labels) -> (state, metrics); the state is donated; the
        dataset is the one :attr:`put_dataset` returned.
      train_batch: (state, images, labels, flips) -> (state, metrics) on one streamed global
        batch (uint8 images, normalised and mirrored where ``flips`` inside), as
        :attr:`put_batch` returns it; the state is donated.
      eval_batch: (state, images, labels, tta=False) -> summed metrics of one padded batch,
        whose size is a multiple of ``num_devices``: host arrays, or what :attr:`put_eval`
        returned for them; ``tta`` uses the views of ``fns.cfg.tta``.
      eval_local: (state, images, labels, tta=False) -> summed metrics of one padded batch
        of which this process passes its own rows (streamed evaluation).
      put_dataset: (host images, host labels) -> the training split on the devices.
      put_batch: (this process's rows of arrays of a batch) -> the global arrays.
      put_eval: (host images, host labels) of one evaluation batch -> the arrays
        :attr:`eval_batch` takes, placed on the devices where the engine can hold them.
      saved: state on the devices -> the single copy that checkpoints hold.
      restored: that copy -> the state on the devices.
    """

    fns: StepFns
    num_devices: int
    init: Callable[[], TrainState]
    train_step: Callable[..., tuple[TrainState, dict[str, Any]]]
    train_batch: Callable[..., tuple[TrainState, dict[str, Any]]]
    eval_batch: Callable[..., dict[str, Any]]
    eval_local: Callable[..., dict[str, Any]]
    put_dataset: Callable[..., tuple[jax.Array, jax.Array]]
    put_batch: Callable[..., tuple[Any, Any]]
    put_eval: Callable[..., tuple[Any, Any]]
    saved: Callable[[TrainState], TrainState]
    restored: Callable[[TrainState], TrainState]


def mesh_batch(cfg: StepConfig, batch_sharding, step, images, labels):
    """Global batch ``step`` (x, y), split over the mesh: constraining the indices to the batch
    sharding makes each device gather, normalise and augment only its own rows."""
    plan = batch_plan(cfg, step)
    plan = plan._replace(indices=jax.lax.with_sharding_constraint(plan.indices, batch_sharding))
    return assemble_batch(cfg, images, labels, plan)


def _mesh_train_step(fns: StepFns, batch_sharding, state: TrainState, images, labels):
    x, y = mesh_batch(fns.cfg, batch_sharding, state.step, images, labels)
    return fns.train(state, x, y)


def streamed_batch(cfg: StepConfig, images, labels, flips):
    """A streamed batch (x, y) as the step sees it: normalised, and mirrored where ``flips``
    (the host draws the flips; mirroring here costs the device nothing and the host a copy of
    every image)."""
    return apply_augment(normalize(images, cfg.norm), None, flips, 0), labels


def _mesh_train_batch(fns: StepFns, state: TrainState, images, labels, flips):
    return fns.train(state, *streamed_batch(fns.cfg, images, labels, flips))


def mesh_engine(fns: StepFns, mesh: Mesh) -> Engine:
    """``fns`` compiled with ``jax.jit`` for ``mesh`` (one device or many, one host or many)."""
    parallel.check_global_batch(fns.cfg.batch_size, mesh.size)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(fns.init))
    options = parallel.compiler_options(mesh.devices.flat[0].platform)
    train_step = jax.jit(
        functools.partial(_mesh_train_step, fns, batch_sharding),
        in_shardings=(state_sharding, replicated, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
        compiler_options=options,
    )
    train_batch = jax.jit(
        functools.partial(_mesh_train_batch, fns),
        in_shardings=(state_sharding, batch_sharding, batch_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
        compiler_options=options,
    )
    eval_steps = {
        tta: jax.jit(
            fn,
            in_shardings=(state_sharding, batch_sharding, batch_sharding),
            out_shardings=replicated,
            compiler_options=options,
        )
        for tta, fn in ((False, fns.eval), (True, fns.eval_tta))
    }

    def put_eval(images, labels):
        put = functools.partial(parallel.to_global, sharding=batch_sharding)
        return put(images), put(labels)

    def eval_batch(state, images, labels, tta=False):
        if not isinstance(images, jax.Array):
            images, labels = put_eval(images, labels)
        return eval_steps[tta](state, images, labels)

    def put_batch(*arrays):
        return tuple(parallel.from_process_local(a, batch_sharding) for a in arrays)

    def eval_local(state, images, labels, tta=False):
        return eval_steps[tta](state, *put_batch(images, labels))

    def put_dataset(images, labels):
        return parallel.to_global(images, replicated), parallel.to_global(labels, replicated)

    def restored(state):  # host arrays onto the mesh, replicated (a checkpoint's already are)
        def put(a):
            if isinstance(a, jax.Array) and a.sharding == replicated:
                return a
            return parallel.to_global(np.asarray(a), replicated)

        return jax.tree.map(put, state)

    return Engine(
        fns=fns,
        num_devices=mesh.size,
        init=jax.jit(
            fns.init,
            out_shardings=state_sharding,
            compiler_options=parallel.init_compiler_options(mesh.devices.flat[0].platform),
        ),
        train_step=train_step,
        train_batch=train_batch,
        eval_batch=eval_batch,
        eval_local=eval_local,
        put_dataset=put_dataset,
        put_batch=put_batch,
        put_eval=put_eval,
        saved=lambda state: state,  # the mesh path saves its global arrays as they are
        restored=restored,
    )


def eval_batches(engine: Engine, images, labels, batch_size: int) -> list[tuple[Any, Any]]:
    """A split in padded batches of about ``batch_size`` (a multiple of the device count;
    padding rows are labelled -1 and not counted), placed for :attr:`Engine.eval_batch` once,
    so that every evaluation of a run reuses them: on a mesh they stay on the devices."""
    devices = engine.num_devices
    batch_size = max(devices, batch_size // devices * devices)
    out = []
    for start in range(0, len(labels), batch_size):
        xb = images[start : start + batch_size]
        yb = np.asarray(labels[start : start + batch_size], np.int32)
        pad = batch_size - len(yb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, -np.ones(pad, np.int32)])
        out.append(engine.put_eval(xb, yb))
    return out


def evaluate_batches(engine: Engine, state: TrainState, batches, tta=False) -> dict[str, float]:
    """Mean loss and accuracy over :func:`eval_batches`: every batch dispatched before any
    result is read, then one transfer; summed in batch order."""
    results = jax.device_get([engine.eval_batch(state, x, y, tta) for x, y in batches])
    totals: dict[str, float] = {}
    for metrics in results:
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0) + v
    return eval_means(totals)


def evaluate(engine: Engine, state: TrainState, images, labels, batch_size: int, tta=False):
    """Mean loss and accuracy over a whole split, in padded batches of about ``batch_size``;
    ``tta``: with the test-time views of the run's ``tta`` setting."""
    return evaluate_batches(engine, state, eval_batches(engine, images, labels, batch_size), tta)
