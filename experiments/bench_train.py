"""Training-step throughput of any registered model (median over steps, compilation excluded).

    python -m experiments.bench_train --model=all_cnn_c --batch=128 --dtype=float32
    python -m experiments.bench_train --model=all_cnn_c --width=0.5 --dtype=bfloat16
    python -m experiments.bench_train --model=resnet50 --image_size=224 --batch=32 --num_devices=1

Measures the real train step of ``cnnjax.train.build_engine`` (batch gather from a device-resident
dataset, forward, backward, SGD with momentum) on random 32×32×3 images, with dropout,
augmentation and weight decay off so that it does what ``../shared/bench/torch_allcnn.py``
does. Prints one line: ``bench_train model=... img_per_s=<number> ...``; with
``--matmul_rate`` it also measures the machine's float32 matrix-multiply rate and reports
the fraction of it the step reaches (model FLOPs from XLA's cost analysis, backward = 2x
forward).
"""

from __future__ import annotations

import jax
from absl import app, flags

from cnnjax import models
from experiments import _bench
from experiments._cli import quiet_unless_verbose
from experiments.configs import airbench

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "all_cnn_c", "Registered model name.")
flags.DEFINE_integer("batch", 128, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_integer("image_size", 32, "Input height and width.")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_string("backend", "xla", "Convolution backend of every layer (cnnjax.ops.conv).")
flags.DEFINE_integer("num_devices", None, "Devices to use (default: all).")
flags.DEFINE_string("downsample", None, "The model's downsampling (e.g. stride), if it has one.")
flags.DEFINE_bool("batch_norm", None, "BatchNorm after every convolution (models that offer it).")
flags.DEFINE_bool("matmul_rate", False, "Also measure the float32 matmul rate and utilisation.")


def main(argv):
    del argv
    quiet_unless_verbose()
    # airbench94 is benchmarked with its own recipe's optimiser: frozen whitening kernel,
    # Nesterov SGD with parameter groups, as ../shared/bench/torch_airbench94.py --bench does.
    base = airbench.get_config() if FLAGS.model == "airbench94" else None
    engine, state, data = _bench.build_train_step(
        FLAGS.model,
        FLAGS.batch,
        FLAGS.dtype,
        FLAGS.width,
        FLAGS.image_size,
        FLAGS.backend,
        FLAGS.num_devices,
        base=base,
        downsample=FLAGS.downsample,
        batch_norm=FLAGS.batch_norm,
    )
    seconds, _ = _bench.time_train_step(engine, state, data, FLAGS.steps)
    img_s = FLAGS.batch / seconds
    line = (
        f"bench_train model={FLAGS.model} width={FLAGS.width} batch={FLAGS.batch} "
        f"dtype={FLAGS.dtype} backend={FLAGS.backend} devices={engine.num_devices} "
        f"platform={jax.devices()[0].platform} ms_per_step={1e3 * seconds:.1f} "
        f"img_per_s={img_s:.1f}"
    )
    if FLAGS.matmul_rate:
        shape = (FLAGS.image_size, FLAGS.image_size, 3)
        fwd = models.count_flops(engine.fns.model, shape)
        achieved = 3 * fwd * img_s / 1e9
        rate = _bench.matmul_gflops()
        line += (
            f" model_gflop_per_s={achieved:.1f} matmul_gflop_per_s={rate:.1f} "
            f"fraction_of_matmul={achieved / rate:.2f}"
        )
    print(line)


if __name__ == "__main__":
    app.run(main)
