"""The on-device input pipeline: shuffling, batching, normalisation and augmentation run inside
``jax.jit``, keyed by (seed, step), so a run is reproducible and resumable bit for bit and the
host never has to feed the accelerator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.data.preprocess import Normalization


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int):
    """Indices of batch ``step``: epochs are fresh permutations, the remainder is dropped.

    Returns (batch_size,) int32. Pure function of (key, step).
    """
    steps_per_epoch = num_examples // batch_size
    epoch, i = jnp.divmod(step, steps_per_epoch)
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)


def normalize(images: jax.Array, norm: Normalization, dtype=jnp.float32) -> jax.Array:
    """(N, H, W, C) uint8 or float -> ``dtype``: ``(x · scale − mean) / std`` per channel."""
    x = images.astype(jnp.float32) * jnp.float32(norm.scale)
    x = (x - jnp.asarray(norm.mean, jnp.float32)) / jnp.asarray(norm.std, jnp.float32)
    return x.astype(dtype)


def augment_params(key: jax.Array, n: int, crop_padding: int = 4, flip: bool = True):
    """Random draws for ``n`` images: crop offsets (n, 2) in [0, 2·pad] and flips (n,).

    Drawn for the global batch and sliced per device, so data-parallel paths see the same
    augmentation as a single device.
    """
    k_crop, k_flip = jax.random.split(key)
    # int32 explicitly: the same draws whether or not 64-bit types are on (JAX's default
    # integer is int64 then, drawn from other bits).
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * crop_padding + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,)) if flip else jnp.zeros((n,), bool)
    return offsets, flips


def alternating_flips(key: jax.Array, step, indices, num_examples: int, steps_per_epoch: int):
    """airbench's flips for the examples ``indices`` of batch ``step``: each example is flipped
    at random once for the whole run (keyed by ``key`` alone), and every other epoch the whole
    set is flipped on top, so each image is seen both ways in every two epochs."""
    base = jax.random.bernoulli(key, 0.5, (num_examples,))[indices]
    return base ^ ((step // steps_per_epoch) % 2 == 1)


def apply_augment(
    images: jax.Array, offsets: jax.Array, flips: jax.Array, crop_padding: int, mode="zeros"
):
    """Crops (after padding by ``crop_padding`` with zeros or, ``mode="reflect"``, the mirror
    image without the edge) and flips (N, H, W, C) images."""
    _, h, w, c = images.shape
    if crop_padding > 0:
        p = crop_padding
        widths = [(0, 0), (p, p), (p, p), (0, 0)]
        padded = (
            jnp.pad(images, widths, mode="reflect")
            if mode == "reflect"
            else jnp.pad(images, widths)
        )
        crop = lambda im, o: lax.dynamic_slice(im, (o[0], o[1], jnp.zeros_like(o[0])), (h, w, c))
        images = jax.vmap(crop)(padded, offsets)
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def augment(
    key: jax.Array, images: jax.Array, crop_padding: int = 4, flip: bool = True, mode="zeros"
):
    """Random crop after padding by ``crop_padding`` pixels (``mode``: "zeros" or "reflect"),
    and random horizontal flips.

    ``images`` (N, H, W, C) -> same shape; each image draws its own offsets and flip.
    """
    offsets, flips = augment_params(key, images.shape[0], crop_padding, flip)
    return apply_augment(images, offsets, flips, crop_padding, mode)
