"""Winograd minimal filtering F(2×2, 3×3) (Lavin & Gray, 2015).

Each 2×2 output tile of a 3×3 stride-1 correlation is computed from a 4×4 input tile with
16 element-wise products per (Cin, Cout) pair instead of 36::

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

The channel sum turns the 16 element-wise products into 16 independent matrix products
(tiles × Cin) · (Cin × Cout), which is where the time goes. Transforms are linear, so JAX
differentiates the whole thing without help.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

# Correlation form of Lavin & Gray's matrices (what deep-learning "convolution" computes).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float32)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float32)


def winograd_conv(x, w, pads, stride, dilation, groups):
    """3×3, stride-1 correlation of ``x`` (N, H, W, Cin) with ``w`` (3, 3, Cin, Cout).

    ``pads`` are explicit zero paddings; stride, dilation and groups must be 1 (checked by the
    front door). Returns (N, H', W', Cout) in ``x``'s dtype.
    """
    del stride, dilation, groups
    dtype = x.dtype
    n, cin, cout = x.shape[0], x.shape[-1], w.shape[-1]
    (pt, pb), (pl, pr) = pads
    ho = x.shape[1] + pt + pb - 2
    wo = x.shape[2] + pl + pr - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    # Pad so the tiles cover the input exactly: (2·tiles + 2) pixels per axis.
    x = jnp.pad(
        x, [(0, 0), (pt, 2 * th + 2 - x.shape[1] - pt), (pl, 2 * tw + 2 - x.shape[2] - pl), (0, 0)]
    )
    # Overlapping 4x4 tiles with step 2, gathered as 16 strided slices: (4, 4, N, th, tw, Cin).
    tiles = jnp.stack(
        [
            jnp.stack(
                [
                    lax.slice(
                        x, (0, a, b, 0), (n, a + 2 * th - 1, b + 2 * tw - 1, cin), (1, 2, 2, 1)
                    )
                    for b in range(4)
                ]
            )
            for a in range(4)
        ]
    )
    bt = jnp.asarray(_BT, dtype)
    v = jnp.einsum("ia,abnhwc,jb->ijnhwc", bt, tiles, bt)  # Bᵀ d B
    g = jnp.asarray(_G, dtype)
    u = jnp.einsum("ia,abco,jb->ijco", g, w, g)  # G g Gᵀ
    m = jnp.einsum("ijnhwc,ijco->ijnhwo", v, u, preferred_element_type=jnp.float32).astype(dtype)
    at = jnp.asarray(_AT, dtype)
    y = jnp.einsum("pi,ijnhwo,qj->nhpwqo", at, m, at)  # Aᵀ M A, tiles back to pixels
    y = y.reshape(n, 2 * th, 2 * tw, cout)
    return y[:, :ho, :wo, :]
