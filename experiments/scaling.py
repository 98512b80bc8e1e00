"""Training throughput against device count, for the mesh (jit) and pmap paths.

    python -m experiments.scaling --fake_cpu_devices=8            # CPU, simulated devices
    python -m experiments.scaling --model=all_cnn_c --width=1 --per_device_batch=128   # GPUs/TPU

Weak scaling: the global batch is ``per_device_batch × devices``. For each device count
(1, 2, 4, ... up to all) and path it times the real train step (median of ``--steps``,
compilation excluded), prints a table and writes ``scaling.csv`` and ``scaling.png``.
On a CPU the simulated devices share the same cores, so the table shows the overhead of the
partitioned program rather than a speed-up; on accelerators the same command measures scaling.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "all_cnn_c", "Registered model name.")
flags.DEFINE_float("width", 0.25, "Width multiplier.")
flags.DEFINE_integer("per_device_batch", 16, "Batch per device (weak scaling).")
flags.DEFINE_integer("image_size", 32, "Input height and width.")
flags.DEFINE_integer("steps", 5, "Timed steps per measurement.")
flags.DEFINE_list("paths", ["jit", "pmap"], "Data-parallel paths to time.")
flags.DEFINE_integer("fake_cpu_devices", 8, "On CPU: simulate this many devices.")
flags.DEFINE_string("out_dir", "results/scaling", "Where the CSV and PNG go.")


def main(argv):
    del argv
    import jax

    if "jax" in sys.modules and FLAGS.fake_cpu_devices:
        # Must happen before the first backend use; harmless on GPU/TPU hosts.
        jax.config.update("jax_num_cpu_devices", FLAGS.fake_cpu_devices)
    from experiments import _bench
    from experiments._cli import quiet_unless_verbose

    quiet_unless_verbose()
    total = jax.device_count()
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= total]
    rows, results = [], {p: {} for p in FLAGS.paths}
    for n in counts:
        for path in FLAGS.paths:
            batch = FLAGS.per_device_batch * n
            engine, state, data = _bench.build_train_step(
                FLAGS.model,
                batch,
                "float32",
                FLAGS.width,
                FLAGS.image_size,
                num_devices=n,
                path=path,
            )
            seconds, _ = _bench.time_train_step(engine, state, data, FLAGS.steps)
            results[path][n] = batch / seconds
            rows.append(
                [
                    n,
                    path,
                    batch,
                    f"{1e3 * seconds:.1f}",
                    f"{batch / seconds:.1f}",
                    f"{results[path][n] / (n * results[path][1]):.2f}",
                ]
            )
            print(f"devices={n} path={path} img_per_s={batch / seconds:.1f}", flush=True)
    header = ["devices", "path", "global batch", "ms/step", "img/s", "efficiency"]
    print(_bench.markdown_table(header, rows))
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    _bench.write_csv(os.path.join(FLAGS.out_dir, "scaling.csv"), header, rows)
    plot(os.path.join(FLAGS.out_dir, "scaling.png"), counts, results, jax.devices()[0].platform)
    print(f"wrote {FLAGS.out_dir}/scaling.csv and scaling.png")


def plot(path, counts, results, platform):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in results.items():
        ax.plot(counts, [values[n] for n in counts], marker="o", label=name)
    base = next(iter(results.values()))[1]
    ax.plot(counts, [base * n for n in counts], "k--", alpha=0.4, label="linear")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("devices")
    ax.set_ylabel("images / s")
    ax.set_title(f"{FLAGS.model} x{FLAGS.width}, {FLAGS.per_device_batch}/device ({platform})")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
