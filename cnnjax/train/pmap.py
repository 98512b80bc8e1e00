"""The classic ``jax.pmap`` data-parallel step, kept beside the mesh path for comparison.

``jax.pmap`` is in maintenance mode; :class:`cnnjax.train.Trainer` (``jax.jit`` over a device
mesh) is the default. This path replicates the state with a leading device axis, gives each
device its share of the same global batch (same indices and augmentation draws as the mesh
path) and averages gradients, metrics and BatchNorm statistics with ``lax.pmean``. BatchNorm
layers normalise with cross-device statistics (``bn_axis_name``), so without dropout both paths
compute the same updates. Dropout masks differ (each device folds in its index).
Single-host only: multi-host runs use the mesh path.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax

from cnnjax.parallel import DATA, compiler_options
from cnnjax.train.trainer import Trainer


class PmapTrainer(Trainer):
    """Same interface as :class:`Trainer`; states carry a leading device axis."""

    def _compile(self) -> None:
        self.devices = list(self.mesh.devices.flat)
        n = len(self.devices)
        # One copy per device; the mapped dummy argument gives pmap its axis size.
        copy = jax.pmap(lambda _, x: x, in_axes=(0, None), devices=self.devices)
        self._replicate = lambda tree: copy(np.arange(n), tree)
        self.init_state = lambda: self._replicate(jax.jit(self._init)())
        options = compiler_options(self.devices[0].platform)
        step = _with_options(
            jax.pmap(
                functools.partial(self._train_step, axis_name=DATA),
                axis_name=DATA,
                devices=self.devices,
                donate_argnums=(0,),
            ),
            options,
        )
        self.train_step = lambda state, images, labels: _first_metrics(step(state, images, labels))
        self.eval_step = _with_options(
            jax.pmap(self._pmap_eval_step, axis_name=DATA, devices=self.devices), options
        )

    def _pmap_eval_step(self, state, images, labels):
        return lax.psum(self._eval_step(state, images, labels), DATA)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def step_of(self, state):
        return state.step[0]

    def params_of(self, state):
        return jax.tree.map(lambda a: a[0], state.params)

    def put_dataset(self, images, labels):
        return self._replicate(images), self._replicate(labels)

    def checkpointable(self, state):
        return jax.tree.map(lambda a: a[0], state)

    def from_checkpoint(self, state):
        return self._replicate(state)

    def _eval_batch(self, state, images, labels):
        n = self.num_devices
        split = lambda a: np.reshape(a, (n, -1, *a.shape[1:]))
        return jax.tree.map(lambda a: a[0], self.eval_step(state, split(images), split(labels)))


def _first_metrics(out):
    state, metrics = out
    return state, jax.tree.map(lambda m: m[0], metrics)


def _with_options(pmapped, options):
    """``pmapped``, compiled ahead of time with XLA ``options`` on its first call for each
    argument signature (``jax.pmap`` itself takes no compiler options)."""
    if not options:
        return pmapped
    compiled = {}

    def call(*args):
        leaves, tree = jax.tree.flatten(args)
        key = tree, tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves)
        if key not in compiled:
            compiled[key] = pmapped.lower(*args).compile(options)
        return compiled[key](*args)

    return call
