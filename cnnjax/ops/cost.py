"""The cost model behind ``backend="auto"``: which of the ``xla`` and ``fft`` backends is
cheaper for a convolution problem (constants fitted in ``experiments/perf_notes.md``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cnnjax.ops._fft import fast_length
from cnnjax.ops.args import ConvGeometry, conv_geometry

# Cost model of the "auto" backend, in units of "direct-convolution multiply-adds".
# An FFT of n real points costs about 2.5·n·log2(n) flops, and the frequency-domain channel
# contraction one complex multiply-add per (frequency, Cin, Cout); both run at a lower flop
# rate than the blocked direct convolution, which FFT_PENALTY accounts for. The kernel's
# spectrum is one small complex matrix product per axis (4 real multiply-adds per complex one).
# FFT_PENALTY is fitted to `python -m experiments.conv_backends` (8x64x64, 16->16, forward +
# backward, default allocator) on the 2-core development CPU: the measured crossover lies
# between k=5 and k=7, and the model switches there for penalties from 4.9 to 9.8; 7 is halfway
# (geometrically). The fit and its history are in experiments/perf_notes.md.
FFT_PENALTY = 7.0


def conv_cost(geom: ConvGeometry) -> dict[str, float]:
    """Estimated cost of the "xla" and "fft" backends for a validated problem, in units of
    direct-convolution multiply-adds (see the constants above)."""
    nd = len(geom.x_shape) - 2
    n, cin = geom.x_shape[0], geom.x_shape[-1]
    cout, cin_g = geom.w_shape[-1], geom.w_shape[-2]
    out = geom.out_shape
    kernel = list(geom.w_shape[:nd])
    direct = n * math.prod(out[1:-1]) * math.prod(kernel) * cin_g * cout
    lengths = [
        fast_length(s + lo + hi) for s, (lo, hi) in zip(geom.x_shape[1:-1], geom.pads, strict=True)
    ]
    p = math.prod(lengths)
    freqs = p // lengths[-1] * (lengths[-1] // 2 + 1)
    transforms = 2.5 * p * math.log2(max(p, 2)) / 2 * (n * cin + n * cout)
    spectrum, dims = 0, kernel  # kernel_spectrum: axis a maps K_a taps to its frequencies
    for a, length in enumerate(lengths):
        f = length // 2 + 1 if a == nd - 1 else length
        spectrum += math.prod(dims) * f
        dims = [*dims[:a], f, *dims[a + 1 :]]
    contraction = 4 * n * freqs * cin_g * cout
    # The spectrum's products run at the rate of the direct convolution: no penalty.
    fft = FFT_PENALTY * (transforms + contraction) + 4 * cin_g * cout * spectrum
    return {"xla": float(direct), "fft": float(fft)}


def cheapest(geom: ConvGeometry) -> str:
    """ "xla" or "fft", whichever :func:`conv_cost` prices lower."""
    costs = conv_cost(geom)
    return "fft" if costs["fft"] < costs["xla"] else "xla"


def select_backend(x_shape: Sequence[int], w_shape: Sequence[int], **conv_args: Any) -> str:
    """The backend ``backend="auto"`` would use for these shapes (cheapest by :func:`conv_cost`).

    ``conv_args``: ``stride``, ``padding``, ``dilation``, ``groups`` as in
    :func:`cnnjax.ops.conv`. Only "xla" and "fft" are candidates: the gemm and Winograd backends
    exist to show the algorithms and to be measured; XLA's convolution beats them at the sizes
    measured in experiments/conv_backends.py and experiments/bench_train.py (gemm only at 1x1).
    """
    return cheapest(conv_geometry(x_shape, w_shape, **conv_args))
