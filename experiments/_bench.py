"""Timing and table helpers shared by the benchmark programs."""

from __future__ import annotations

import csv
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from cnnjax import models, parallel
from cnnjax.data import Normalization
from cnnjax.train import Trainer, default_config, make_optimizer


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    The warm-up calls absorb compilation; every call is waited for with ``block_until_ready``
    because JAX dispatches asynchronously.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The machine's float32 matrix-multiply rate through XLA, in GFLOP/s: the faster of
    XLA's default CPU kernels and cnnjax's compiler options (which turn YNNPACK off), so
    that a utilisation quoted against it is never flattered."""
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    seconds = [
        median_seconds(functools.partial(jax.jit(jnp.matmul, compiler_options=o), a, a), repeats)
        for o in ({}, parallel.compiler_options())
    ]
    return 2 * n**3 / min(seconds) / 1e9


def build_train_step(
    model_name: str,
    batch: int,
    dtype: str,
    width: float,
    image_size: int,
    conv_backend: str = "xla",
    num_devices: int | None = None,
    path: str = "jit",
):
    """A Trainer (``path`` "jit" or "pmap"), its initial state and a device-resident random
    dataset of 4 batches."""
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
    cls = Trainer
    if path == "pmap":
        from cnnjax.train.pmap import PmapTrainer

        cls, model = PmapTrainer, model.clone(bn_axis_name=parallel.DATA)
    trainer = cls(
        model,
        tx,
        schedule,
        Normalization(1 / 255, (0.5,) * 3, (0.25,) * 3),
        num_classes=10,
        image_shape=images.shape[1:],
        num_train=n,
        batch_size=batch,
        mesh=parallel.make_mesh(num_devices),
    )
    return trainer, trainer.init_state(), trainer.put_dataset(images, labels)


def time_train_step(trainer, state, data, steps: int) -> tuple[float, object]:
    """Median seconds per train step; returns the advanced state too (it is donated)."""
    holder = {"state": state}

    def step():
        holder["state"], metrics = trainer.train_step(holder["state"], *data)
        return metrics["loss"]

    seconds = median_seconds(step, steps, warmup=2)
    return seconds, holder["state"]
