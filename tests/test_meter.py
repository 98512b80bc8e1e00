"""The loop's metrics on their way to the logs: rows of the right steps, summed in step order
as the per-step fetch summed them, a row late unless asked now, and a divergence named at its
first step."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import train
from cnnjax.data import load_dataset, preprocess
from cnnjax.train.build import initial_state
from cnnjax.train.meter import CHUNK, Meter
from experiments.configs import allcnn


def _metrics(values):
    """Per-step metrics as a step returns them: float32 scalars on the device."""
    return [{"loss": jnp.float32(v), "accuracy": jnp.float32(v / 10)} for v in values]


def _means(values):
    """What the loop logged when it fetched every step: float64 sums in step order."""
    total = 0.0
    for v in values:
        total += float(np.float32(v))
    return total / len(values)


def test_rows_arrive_a_row_late_with_the_per_step_sums():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(2 * CHUNK + 9).astype(np.float32)  # rows across chunks
    meter = Meter(0, batch_size=8, steps_in_flight=2, kept=lambda: "")
    split = CHUNK + 5
    for step, m in enumerate(_metrics(values), start=1):
        meter.add(step, m)
        if step == split:  # not now: the row waits for the next one
            with meter.row(step, now=False) as rows:
                assert rows == []
    with meter.row(len(values), now=True) as rows:
        pass
    assert [s for s, _ in rows] == [split, len(values)]
    with meter.row(len(values), now=True) as nothing_new:
        assert nothing_new == []
    for (_, row), part in zip(rows, (values[:split], values[split:]), strict=True):
        assert row["train_loss"] == _means(part)  # the same float64 number, bit for bit
        assert row["train_accuracy"] == _means(part / np.float32(10))
    epoch = meter.epoch_row()
    assert epoch["train_loss"] == _means(values)
    # The first step compiles: it is in the sums but not in the step time.
    assert epoch["train_images_per_sec"] == pytest.approx(8 / epoch["train_step_time"])


def test_a_divergence_is_named_at_its_first_step():
    values = [1.0, 2.0, np.inf, np.nan, 3.0]
    meter = Meter(10, batch_size=8, steps_in_flight=1, kept=lambda: "Kept: step 10")
    for step, m in enumerate(_metrics(values), start=11):
        meter.add(step, m)
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"training stopped at step 15: the train loss is inf \(not finite\) from step 13 "
        r"on\. Kept: step 10; lower `learning_rate`",
    ):
        with meter.row(15, now=True):
            pass


def test_logged_rows_are_the_means_of_the_steps_run_by_hand(tmp_path, capsys):
    with jax.numpy_dtype_promotion("standard"):  # optax internals; see test_train.py
        _logged_rows_are_the_means_of_the_steps_run_by_hand(str(tmp_path / "run"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("time (s): before run ") and "final evaluation" in last


def _logged_rows_are_the_means_of_the_steps_run_by_hand(workdir):
    # The loop's rows against the engine driven step by step from the same initial state,
    # each step's metrics fetched: the same steps, the same float64 sums, equal exactly.
    config = allcnn.get_config("quick")
    # Rows at 8, 16 and 20 (the epoch's end); a profiler trace of steps 3 and 4.
    config.update(dict(progress=False, num_epochs=1, log_every_steps=8, profile_steps="3:5"))
    train.train_and_evaluate(config, workdir)
    rows = [r for r in train.read_metrics(workdir) if "train_loss" in r]
    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    engine = train.build_engine(config, dataset, norm)
    state = initial_state(config, engine, dataset, norm)
    data = engine.put_dataset(dataset.splits["train"].images, dataset.splits["train"].labels)
    losses = []
    for _ in range(20):
        state, metrics = engine.train_step(state, *data)
        losses.append(float(jax.device_get(metrics["loss"])))
    assert [r["step"] for r in rows] == [8, 16, 20, 20]  # three rows, then the epoch's
    assert [r["train_loss"] for r in rows] == [
        _means(losses[:8]),
        _means(losses[8:16]),
        _means(losses[16:]),
        _means(losses),
    ]
    with open(os.path.join(workdir, "timing.json")) as f:
        timing = json.load(f)["20"]
    # The breakdown: the steps' time holds the host's waits, and no part exceeds the run.
    assert 0 <= timing["device_wait_seconds"] <= timing["steps_seconds"]
    parts = ("steps_seconds", "log_seconds", "checkpoint_seconds")
    assert sum(timing[k] for k in parts) <= timing["train_seconds"]
    for key in ("before_run_seconds", "data_seconds", "setup_seconds", "compile_seconds"):
        assert timing[key] >= 0, key
    traced = [f for _, _, files in os.walk(os.path.join(workdir, "profile")) for f in files]
    assert any(f.endswith(".xplane.pb") for f in traced)  # TensorBoard's profile tab
    assert "perfetto_trace.json.gz" in traced
