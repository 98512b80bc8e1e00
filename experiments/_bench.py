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
from cnnjax.data import Dataset, Normalization, Split
from cnnjax.train import build_engine, default_config


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
    backend: str = "xla",
    num_devices: int | None = None,
    path: str = "jit",
    base=None,
    downsample: str | None = None,
    batch_norm: bool | None = None,
):
    """The engine of a training run (``path`` "jit" or "pmap") on a random dataset of 4
    batches, built by :func:`cnnjax.train.build_engine` like every run; returns the engine,
    its initial state and the dataset on the devices. ``base``: the config to start from (a
    model's recipe; default: SGD with momentum at a constant rate, no weight decay). Dropout,
    augmentation and weight averaging off, as in the PyTorch benchmarks."""
    config = base.copy_and_resolve_references() if base is not None else default_config()
    if base is None:
        config.learning_rate, config.weight_decay, config.schedule = 0.01, 0.0, "constant"
    config.model, config.width, config.backend, config.compute_dtype = (
        model_name,
        width,
        backend,
        dtype,
    )
    config.batch_size, config.num_devices, config.parallel = batch, num_devices, path
    config.crop_padding, config.flip, config.lookahead_every = 0, False, 0
    if downsample is not None:
        config.downsample = downsample
    if batch_norm is not None:
        config.batch_norm = batch_norm
    fields = models.model_fields(model_name)
    for key in ("dropout", "input_dropout"):
        if key in fields:
            config[key] = 0.0
    n = 4 * batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    dataset = Dataset("random", 10, {"train": Split(images, labels)})
    engine = build_engine(config, dataset, Normalization(1 / 255, (0.5,) * 3, (0.25,) * 3))
    return engine, engine.init(), engine.put_dataset(images, labels)


def time_train_step(engine, state, data, steps: int) -> tuple[float, object]:
    """Median seconds per train step; returns the advanced state too (it is donated)."""
    holder = {"state": state}

    def step():
        holder["state"], metrics = engine.train_step(holder["state"], *data)
        return metrics["loss"]

    seconds = median_seconds(step, steps, warmup=2)
    return seconds, holder["state"]
