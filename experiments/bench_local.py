"""Time and memory of a locally connected layer beside the convolution it generalises.

    python -m experiments.bench_local [--size=32] [--channels=64] [--batch=32]

For a 3×3 layer, ``size``×``size``×``channels`` -> ``channels``, SAME: median milliseconds of
forward and of forward + backward (input and kernel gradients, random output gradient),
compilation excluded, and XLA's temporary memory for the forward + backward program, for
``cnnjax.ops.conv2d`` and ``cnnjax.ops.locally_connected2d``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cnnjax import ops, parallel
from experiments import _bench
from experiments._cli import quiet_unless_verbose

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 32, "Input height and width.")
flags.DEFINE_integer("channels", 64, "Input and output channels.")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_integer("repeats", 11, "Timed calls per measurement (the median is reported).")


def measure(name: str, f, x, w) -> list[object]:
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.standard_normal(f(x, w).shape), jnp.float32)
    options = parallel.compiler_options()
    fwd = jax.jit(f, compiler_options=options)
    both = jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g), compiler_options=options)
    memory = both.lower(x, w, g).compile().memory_analysis().temp_size_in_bytes
    return [
        name,
        f"{w.size:,}",
        f"{1e3 * _bench.median_seconds(functools.partial(fwd, x, w), FLAGS.repeats):.1f}",
        f"{1e3 * _bench.median_seconds(functools.partial(both, x, w, g), FLAGS.repeats):.1f}",
        f"{memory / 2**20:.0f}",
    ]


def main(argv):
    del argv
    quiet_unless_verbose()
    n, s, c = FLAGS.batch, FLAGS.size, FLAGS.channels
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, s, s, c)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
    local = jnp.broadcast_to(kernel, (s, s, 3, 3, c, c)) + 0.0
    rows = [
        measure("conv2d (shared)", lambda x, w: ops.conv2d(x, w, padding="SAME"), x, kernel),
        measure(
            "locally_connected2d",
            lambda x, w: ops.locally_connected2d(x, w, padding="SAME"),
            x,
            local,
        ),
    ]
    patches = n * s * s * 9 * c * 4 / 2**20
    header = ["layer", "parameters", "forward ms", "forward + backward ms", "temporary MiB"]
    print(f"{n}x{s}x{s}x{c} -> {c}, 3x3 SAME; one im2col copy of the input: {patches:.0f} MiB")
    print(_bench.markdown_table(header, rows))


if __name__ == "__main__":
    app.run(main)
