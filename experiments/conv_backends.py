"""Times every conv2d backend against kernel size; finds where the FFT starts to win.

    python -m experiments.conv_backends                       # 64x64, 16->16, batch 8
    python -m experiments.conv_backends --image_size=32 --kernels=1,3,5,7 --repeats=3

Prints a table of median milliseconds (forward, and forward + backward with respect to input
and kernel for a random output gradient; compilation excluded), writes ``conv_backends.csv``
and ``conv_backends.png`` to ``--out_dir`` and reports the smallest kernel from which the FFT
beats XLA at every size.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cnnjax import ops, parallel
from experiments import _bench

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 64, "Height and width of the input.")
flags.DEFINE_integer("channels", 16, "Input channels.")
flags.DEFINE_integer("out_channels", 16, "Output channels.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_list("kernels", [str(k) for k in range(1, 32, 2)], "Kernel sizes to time.")
flags.DEFINE_list("backends", ["xla", "fft", "gemm", "winograd"], "Backends to time.")
flags.DEFINE_integer("repeats", 11, "Timed calls per measurement (the median is reported).")
flags.DEFINE_integer("gemm_max_mb", 768, "Skip gemm where its im2col matrix exceeds this.")
flags.DEFINE_string("out_dir", "results/conv_backends", "Where the CSV and PNG go.")
flags.DEFINE_bool(
    "keep_freed_memory",
    False,
    "Let malloc keep freed memory (cnnjax.parallel.keep_freed_host_memory), so that calls "
    "do not page-fault their temporaries in again; applies to every backend. Process-wide, "
    "so off unless asked for; the README's table is measured without it.",
)


def _applicable(backend: str, k: int, x_shape) -> bool:
    if backend == "winograd":
        return k == 3
    if backend == "gemm":
        return 4 * math.prod(x_shape) * k * k / 2**20 <= FLAGS.gemm_max_mb
    return True


def time_backend(backend: str, k: int) -> tuple[float, float]:
    """Median seconds of the forward pass and of forward + backward (dx and dw)."""
    rng = np.random.default_rng(0)
    shape = (FLAGS.batch, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, FLAGS.channels, FLAGS.out_channels)), jnp.float32)
    options = parallel.compiler_options()
    conv = functools.partial(ops.conv2d, padding="SAME", backend=backend)
    fwd = jax.jit(conv, compiler_options=options)
    # A random output gradient, passed in: with jnp.sum as the loss the gradient would be a
    # constant of ones, which XLA folds into the backward pass unlike any real training step.
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(fwd, x, w).shape), jnp.float32)
    both = jax.jit(
        jax.grad(lambda x, w, g: jnp.vdot(conv(x, w), g), argnums=(0, 1)),
        compiler_options=options,
    )
    return (
        _bench.median_seconds(lambda: fwd(x, w), FLAGS.repeats),
        _bench.median_seconds(lambda: both(x, w, g), FLAGS.repeats),
    )


def crossover(kernels, xla, fft):
    """Smallest kernel size from which FFT is faster than XLA at every larger size measured."""
    best = None
    for k in reversed(kernels):
        if fft[k] >= xla[k]:
            break
        best = k
    return best


def plot(path, kernels, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, idx, title in zip(axes, (0, 1), ("forward", "forward + backward"), strict=True):
        for backend, times in results.items():
            ks = [k for k in kernels if k in times]
            ax.plot(ks, [1e3 * times[k][idx] for k in ks], marker="o", label=backend)
        ax.set_yscale("log")
        ax.set_xlabel("kernel size")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("median ms")
    axes[0].legend()
    fig.suptitle(
        f"conv2d backends: {FLAGS.batch}x{FLAGS.image_size}x{FLAGS.image_size}, "
        f"{FLAGS.channels}->{FLAGS.out_channels} channels, SAME, stride 1 "
        f"({jax.devices()[0].platform})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    if FLAGS.keep_freed_memory:
        print(f"malloc keeps freed memory: {parallel.keep_freed_host_memory()}")
    kernels = [int(k) for k in FLAGS.kernels]
    shape = (FLAGS.batch, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    results = {b: {} for b in FLAGS.backends}
    for k in kernels:
        for backend in FLAGS.backends:
            if _applicable(backend, k, shape):
                results[backend][k] = time_backend(backend, k)
        auto = ops.select_backend(shape, (k, k, FLAGS.channels, FLAGS.out_channels))
        cells = "  ".join(
            f"{b}={1e3 * results[b][k][1]:.2f}" for b in FLAGS.backends if k in results[b]
        )
        print(f"k={k:2d} fwd+bwd ms: {cells}  auto->{auto}", flush=True)

    header = ["kernel", "auto picks"] + [
        f"{b} {p} ms" for b in FLAGS.backends for p in ("fwd", "fwd+bwd")
    ]
    rows = []
    for k in kernels:
        row = [k, ops.select_backend(shape, (k, k, FLAGS.channels, FLAGS.out_channels))]
        for b in FLAGS.backends:
            t = results[b].get(k)
            row += [f"{1e3 * t[0]:.2f}", f"{1e3 * t[1]:.2f}"] if t else ["-", "-"]
        rows.append(row)
    print(_bench.markdown_table(header, rows))
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    _bench.write_csv(os.path.join(FLAGS.out_dir, "conv_backends.csv"), header, rows)
    plot(os.path.join(FLAGS.out_dir, "conv_backends.png"), kernels, results)
    if "xla" in results and "fft" in results:
        xla = {k: v[1] for k, v in results["xla"].items()}
        fft = {k: v[1] for k, v in results["fft"].items()}
        k0 = crossover(kernels, xla, fft)
        print(f"FFT beats XLA (forward + backward) from kernel size {k0} upwards.")
        for k in (3, 9, 15):
            if k in xla and k in fft:
                print(f"k={k}: xla/fft speed-up {xla[k] / fft[k]:.2f}x")
    if "gemm" in results and 3 in results["gemm"] and 3 in results.get("xla", {}):
        print(f"k=3: gemm/xla time ratio {results['gemm'][3][1] / results['xla'][3][1]:.2f}")
    print(f"wrote {FLAGS.out_dir}/conv_backends.csv and conv_backends.png")


if __name__ == "__main__":
    app.run(main)
