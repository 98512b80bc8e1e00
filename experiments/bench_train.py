"""Training-step throughput of any registered model (median over steps, compilation excluded).

    python -m experiments.bench_train --model=all_cnn_c --batch=128 --dtype=float32
    python -m experiments.bench_train --model=all_cnn_c --width=0.5 --dtype=bfloat16

Measures the real train step of ``cnnjax.train.Trainer`` (batch gather from a device-resident
dataset, forward, backward, SGD with momentum) on random 32×32×3 images, with dropout,
augmentation and weight decay off so that it does what ``../shared/bench/torch_allcnn.py``
does. Prints one line: ``bench_train model=... img_per_s=<number> ...``; with
``--matmul_rate`` it also measures the machine's float32 matrix-multiply rate and reports
the fraction of it the step reaches (model FLOPs from XLA's cost analysis, backward = 2x
forward).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from cnnjax import models, parallel
from cnnjax.data import Normalization
from cnnjax.train import Trainer, default_config, make_optimizer
from experiments import _bench
from experiments._cli import quiet_unless_verbose

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "all_cnn_c", "Registered model name.")
flags.DEFINE_integer("batch", 128, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_integer("image_size", 32, "Input height and width.")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_string("conv_backend", "xla", "conv2d backend for every convolution.")
flags.DEFINE_integer("num_devices", None, "Devices to use (default: all).")
flags.DEFINE_bool("matmul_rate", False, "Also measure the float32 matmul rate and utilisation.")


def build(model_name: str, batch: int, dtype: str, width: float, image_size: int,
          conv_backend: str = "xla", num_devices: int | None = None):  # fmt: skip
    """A Trainer, its initial state and a device-resident random dataset of 4 batches."""
    config = default_config()
    config.learning_rate, config.weight_decay, config.schedule = 0.01, 0.0, "constant"
    overrides = dict(width=width, conv_backend=conv_backend)
    fields = models.model_fields(model_name)
    for key in ("dropout", "input_dropout"):
        if key in fields:
            overrides[key] = 0.0
    if dtype == "bfloat16":
        overrides["dtype"] = jax.numpy.bfloat16
    model = models.get_model(model_name, **overrides)
    n = 4 * batch
    tx, schedule = make_optimizer(config, n // batch)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    trainer = Trainer(
        model, tx, schedule, Normalization(1 / 255, (0.5,) * 3, (0.25,) * 3),
        num_classes=10, image_shape=images.shape[1:], num_train=n, batch_size=batch,
        mesh=parallel.make_mesh(num_devices),
    )  # fmt: skip
    return trainer, trainer.init_state(), trainer.put_dataset(images, labels)


def measure(trainer, state, data, steps: int) -> tuple[float, object]:
    """Median seconds per train step; returns the advanced state too (it is donated)."""
    holder = {"state": state}

    def step():
        holder["state"], metrics = trainer.train_step(holder["state"], *data)
        return metrics["loss"]

    seconds = _bench.median_seconds(step, steps, warmup=2)
    return seconds, holder["state"]


def main(argv):
    del argv
    quiet_unless_verbose()
    trainer, state, data = build(
        FLAGS.model,
        FLAGS.batch,
        FLAGS.dtype,
        FLAGS.width,
        FLAGS.image_size,
        FLAGS.conv_backend,
        FLAGS.num_devices,
    )
    seconds, _ = measure(trainer, state, data, FLAGS.steps)
    img_s = FLAGS.batch / seconds
    line = (
        f"bench_train model={FLAGS.model} width={FLAGS.width} batch={FLAGS.batch} "
        f"dtype={FLAGS.dtype} backend={FLAGS.conv_backend} devices={trainer.num_devices} "
        f"platform={jax.devices()[0].platform} ms_per_step={1e3 * seconds:.1f} "
        f"img_per_s={img_s:.1f}"
    )
    if FLAGS.matmul_rate:
        shape = (FLAGS.image_size, FLAGS.image_size, 3)
        fwd = models.count_flops(trainer.model, shape)
        achieved = 3 * fwd * img_s / 1e9
        rate = _bench.matmul_gflops()
        line += (
            f" model_gflop_per_s={achieved:.1f} matmul_gflop_per_s={rate:.1f} "
            f"fraction_of_matmul={achieved / rate:.2f}"
        )
    print(line)


if __name__ == "__main__":
    app.run(main)
