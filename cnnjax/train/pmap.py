"""The classic ``jax.pmap`` data-parallel step, kept beside the mesh path for comparison.

``jax.pmap`` is in maintenance mode; :func:`cnnjax.train.engine.mesh_engine` is the default.
This engine composes the same pure functions of :mod:`cnnjax.train.step` and adds only what
pmap needs: a leading device axis on the state, each device's share of the global batch (the
same indices and augmentation draws as the mesh path), ``lax.pmean`` of gradients, metrics and
BatchNorm statistics, and cross-device BatchNorm (the model's ``bn_axis_name``). Without
dropout both paths compute the same updates up to float32 summation order; dropout masks
differ (each device folds in its index). Single-host only: multi-host runs use the mesh path.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax import lax

from cnnjax import parallel
from cnnjax.parallel import DATA
from cnnjax.train.engine import Engine, streamed_batch
from cnnjax.train.step import (
    BatchPlan,
    StepFns,
    TrainState,
    apply_grads,
    assemble_batch,
    batch_plan,
    loss_and_grads,
    make_step_fns,
)


def batch_share(plan: BatchPlan, index, count: int) -> BatchPlan:
    """Device ``index``'s rows of a global batch plan split evenly over ``count`` devices."""
    size = plan.indices.shape[0] // count
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, index * size, size), plan)


def _pmap_train_step(fns: StepFns, state: TrainState, images, labels):
    share = batch_share(batch_plan(fns.cfg, state.step), lax.axis_index(DATA), lax.axis_size(DATA))
    return _pmap_update(fns, state, *assemble_batch(fns.cfg, images, labels, share))


def _pmap_train_batch(fns: StepFns, state: TrainState, images, labels, flips):
    return _pmap_update(fns, state, *streamed_batch(fns.cfg, images, labels, flips))


def _pmap_update(fns: StepFns, state: TrainState, x, y):
    """This device's share (x, y) of the global batch: gradients averaged over devices."""
    i = lax.axis_index(DATA)
    dropout_key = jax.random.fold_in(jax.random.fold_in(fns.cfg.keys()[3], state.step), i)
    grads, stats, metrics = loss_and_grads(
        fns.model, fns.cfg, state.params, state.batch_stats, x, y, dropout_key
    )
    grads, stats, metrics = lax.pmean((grads, stats, metrics), DATA)
    metrics["learning_rate"] = fns.schedule(state.step)
    return apply_grads(fns.tx, state, grads, stats, fns.cfg), metrics


def _pmap_eval_step(eval_fn, state: TrainState, images, labels):
    return lax.psum(eval_fn(state, images, labels), DATA)


class _CompiledOnFirstCall:
    """A pmapped function compiled ahead of time with XLA ``options`` when first called
    (``jax.pmap`` takes no compiler options; one run calls it with one argument signature)."""

    def __init__(self, pmapped, options):
        self.pmapped, self.options, self.executable = pmapped, options, None

    def __call__(self, *args):
        if self.executable is None:
            self.executable = self.pmapped.lower(*args).compile(self.options or None)
        return self.executable(*args)


def pmap_engine(fns: StepFns, devices) -> Engine:
    """``fns`` under ``jax.pmap`` over ``devices``; states carry a leading device axis."""
    devices = list(devices)
    n = len(devices)
    if "bn_axis_name" in {f.name for f in dataclasses.fields(fns.model)}:
        fns = make_step_fns(
            fns.model.clone(bn_axis_name=DATA), fns.tx, fns.schedule, fns.cfg, fns.image_shape
        )
    # One copy per device; the mapped dummy argument gives pmap its axis size.
    copy = jax.pmap(lambda _, x: x, in_axes=(0, None), devices=devices)
    replicate = lambda tree: copy(np.arange(n), tree)
    options = parallel.compiler_options(devices[0].platform)
    init_options = parallel.init_compiler_options(devices[0].platform)
    step, batch_step = (
        _CompiledOnFirstCall(
            jax.pmap(
                functools.partial(fn, fns), axis_name=DATA, devices=devices, donate_argnums=(0,)
            ),
            options,
        )
        for fn in (_pmap_train_step, _pmap_train_batch)
    )
    eval_steps = {
        tta: _CompiledOnFirstCall(
            jax.pmap(functools.partial(_pmap_eval_step, fn), axis_name=DATA, devices=devices),
            options,
        )
        for tta, fn in ((False, fns.eval), (True, fns.eval_tta))
    }
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)
    split = lambda a: np.reshape(a, (n, -1, *a.shape[1:]))

    def train_step(state, images, labels):
        state, metrics = step(state, images, labels)
        return state, first(metrics)

    def train_batch(state, images, labels, flips):
        state, metrics = batch_step(state, images, labels, flips)
        return state, first(metrics)

    def eval_batch(state, images, labels, tta=False):
        return first(eval_steps[tta](state, split(images), split(labels)))

    return Engine(
        fns=fns,
        num_devices=n,
        init=lambda: replicate(jax.jit(fns.init, compiler_options=init_options)()),
        train_step=train_step,
        train_batch=train_batch,
        eval_batch=eval_batch,
        eval_local=eval_batch,  # single-host: this process's rows are the whole batch
        put_dataset=lambda images, labels: (replicate(images), replicate(labels)),
        put_batch=lambda *arrays: tuple(map(split, arrays)),
        put_eval=lambda images, labels: (images, labels),  # each call moves its batch
        saved=first,
        restored=replicate,
    )
