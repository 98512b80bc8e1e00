"""How much a trained network's predictions move when its input moves: shift invariance.

Zhang (2019, "Making Convolutional Networks Shift-Invariant Again") measures *consistency*: the
fraction of images whose predicted class is the same for two random translations of the image.
Translations here are over reflect padding (no black borders, which a network could detect),
by whole pixels, and drawn from a fixed seed so that every network sees the same ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import apply_augment, normalize
from cnnjax.parallel import jit
from cnnjax.train.step import StepFns, TrainState, variables_of


def _predict(fns: StepFns, state: TrainState, images, offsets, pad: int):
    """Predicted classes of ``images`` (N, H, W, C) translated by ``offsets - pad`` pixels."""
    weights = state.averages.get("ema", {"params": state.params, "batch_stats": state.batch_stats})
    x = normalize(images, fns.cfg.norm)
    x = apply_augment(x, offsets, jnp.zeros(len(x), bool), pad, mode="reflect")
    logits = fns.model.apply(variables_of(weights["params"], weights["batch_stats"]), x)
    return jnp.argmax(logits, -1)


@functools.cache
def _compiled_predict():
    # Built on first use: jitting at import would start JAX's backend, and multi-host programs
    # must initialise jax.distributed before that.
    return jit(_predict, static_argnums=(0, 4))


def predict_translated(
    fns: StepFns, state: TrainState, images, shifts, pad: int, batch_size: int = 500
) -> np.ndarray:
    """Classes predicted for each image moved by ``shifts`` (N, 2) pixels (rows, columns;
    each in [-pad, pad]) over reflect padding of ``pad``: image i becomes the crop of its
    padded copy that starts at ``pad + shifts[i]``. ``state``: one copy, as saved."""
    shifts = np.asarray(shifts, np.int32)
    if np.abs(shifts).max(initial=0) > pad:
        raise ValueError(f"`shifts` must lie in [-{pad}, {pad}], got up to {np.abs(shifts).max()}.")
    predict = _compiled_predict()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        out.append(predict(fns, state, images[chunk], shifts[chunk] + pad, pad))
    return np.concatenate([np.asarray(p) for p in out])


def shift_consistency(
    fns: StepFns, state: TrainState, images, max_shift: int = 4, seed: int = 0
) -> float:
    """Fraction of images with the same predicted class under two random translations by up
    to ``max_shift`` pixels along each axis (Zhang's consistency)."""
    rng = np.random.default_rng(seed)
    draw = lambda: rng.integers(-max_shift, max_shift + 1, (len(images), 2))
    first = predict_translated(fns, state, images, draw(), max_shift)
    second = predict_translated(fns, state, images, draw(), max_shift)
    return float(np.mean(first == second))


def shifted_accuracy(fns: StepFns, state: TrainState, images, labels, shift: int) -> float:
    """Accuracy when every image is moved by ``shift`` pixels up and left (the crop of its
    mirror-padded copy starts ``shift`` pixels down and right)."""
    shifts = np.full((len(images), 2), shift)
    predictions = predict_translated(fns, state, images, shifts, max(shift, 1))
    return float(np.mean(predictions == np.asarray(labels)))


def translation_report(fns: StepFns, state: TrainState, images, labels, shifts=(1, 2, 4)):
    """``{"consistency": ..., "shift1_accuracy": ..., ...}`` for a trained run's state."""
    state = jax.device_get(state)
    report = {"consistency": shift_consistency(fns, state, images, max(shifts))}
    for k in shifts:
        report[f"shift{k}_accuracy"] = shifted_accuracy(fns, state, images, labels, k)
    return report
