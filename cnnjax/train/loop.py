"""``train_and_evaluate(config, workdir)``: the training loop behind ``experiments/train.py``.

The workdir is the run: ``config.json``, ``metrics.jsonl``, TensorBoard events, Orbax
checkpoints and ``results.json``. Calling it again on the same workdir resumes from the
latest checkpoint. SIGINT/SIGTERM write a checkpoint and return; a non-finite loss stops the
run naming the step, keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from cnnjax import models, parallel
from cnnjax.data import Dataset, Normalization, load_dataset, preprocess
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import validate_config
from cnnjax.train.metrics import MetricWriter
from cnnjax.train.optim import make_optimizer
from cnnjax.train.plots import plot_curves
from cnnjax.train.trainer import Trainer


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step."""


def build_model(config, num_classes: int):
    """The configured registry model, with the overrides the config sets."""
    overrides: dict[str, Any] = dict(
        num_classes=num_classes, width=config.width, conv_backend=config.conv_backend
    )
    if config.compute_dtype == "bfloat16":
        overrides["dtype"] = jnp.bfloat16
    for key in ("batch_norm", "dropout", "input_dropout", "downsample", "activation"):
        if config[key] is not None:
            overrides[key] = config[key]
    return models.get_model(config.model, **overrides)


def load_data(config) -> tuple[Dataset, Normalization]:
    dataset = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        download=config.download,
    )
    return preprocess(dataset, config.preprocess)


def build_trainer(config, dataset: Dataset, norm: Normalization, mesh=None) -> Trainer:
    """A :class:`Trainer` (jit over a mesh) or, with ``parallel="pmap"``, a ``PmapTrainer``."""
    mesh = mesh or parallel.make_mesh(config.num_devices)
    train = dataset.splits["train"]
    steps_per_epoch = len(train) // config.batch_size
    tx, schedule = make_optimizer(config, max(steps_per_epoch, 1))
    model = build_model(config, dataset.num_classes)
    cls = Trainer
    if config.parallel == "pmap":
        from cnnjax.train.pmap import PmapTrainer

        cls, model = PmapTrainer, model.clone(bn_axis_name=parallel.DATA)
    return cls(
        model,
        tx,
        schedule,
        norm,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        num_train=len(train),
        batch_size=config.batch_size,
        mesh=mesh,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        crop_padding=config.crop_padding,
        flip=config.flip,
    )


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _host(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns results."""
    validate_config(config)
    lead = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    dataset, norm = load_data(config)
    trainer = build_trainer(config, dataset, norm)
    with Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints) as ckpts:
        return _run(config, workdir, trainer, dataset, ckpts, lead)


def _run(config, workdir, trainer, dataset, checkpoints, lead) -> dict[str, float]:
    steps_per_epoch = trainer.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    state = trainer.init_state()
    if checkpoints.latest_step() is not None:
        # Raises CheckpointError before anything is written.
        state = trainer.from_checkpoint(checkpoints.restore(trainer.checkpointable(state)))
    start = int(jax.device_get(trainer.step_of(state)))
    if lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    num_params = models.count_params(trainer.params_of(state))
    say = tqdm.write if lead else (lambda *_: None)
    say(
        f"{dataset.summary()}\nmodel {config.model}: {num_params:,} parameters; "
        f"{trainer.num_devices} device(s); {steps_per_epoch} steps/epoch, {total_steps} total"
        + (f"; resuming at step {start}" if start else "")
    )
    writer = MetricWriter(workdir, enabled=lead)
    images, labels = trainer.put_dataset(
        dataset.splits["train"].images, dataset.splits["train"].labels
    )
    val = dataset.splits["validation"]
    step, bar, pending = start, None, None
    epoch_sums, log_sums = _Sums(), _Sums()
    t_last, run_start, compile_s = time.perf_counter(), time.perf_counter(), 0.0
    last_eval: dict[str, float] = {}

    def resolve(pending):
        """Waits for one step's metrics (one step behind the dispatch) and checks them."""
        nonlocal t_last, compile_s
        s, m = pending
        m = _host(m)
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        for name in ("loss", "accuracy"):
            if not math.isfinite(m[name]):
                raise NonFiniteLossError(
                    f"training stopped at step {s}: the train {name} is {m[name]} (not finite). "
                    f"The last good checkpoint (step {checkpoints.latest_step()}) is kept in "
                    f"{checkpoints.directory}; lower `learning_rate` or set `grad_clip_norm`."
                )
        if s == start + 1:
            compile_s = dt  # the first step of a run includes compilation: not timed
        else:
            m["step_time"] = dt
            m["images_per_sec"] = config.batch_size / dt
        epoch_sums.add(m)
        log_sums.add(m)
        return s, m

    with _StopRequest() as stop:
        try:
            while step < total_steps:
                state, metrics = trainer.train_step(state, images, labels)
                step += 1
                if pending is not None:
                    resolve(pending)
                pending = (step, metrics)
                if bar is None and step == start + 2:
                    bar = tqdm(
                        total=total_steps,
                        initial=step - 1,
                        unit="step",
                        disable=not (lead and config.progress),
                        dynamic_ncols=True,
                        leave=False,
                    )
                if bar is not None:
                    bar.update(1)
                epoch_end = step % steps_per_epoch == 0 or step == total_steps
                if step % config.log_every_steps == 0 or epoch_end or stop.signal_name:
                    resolve(pending)
                    pending = None
                    row = log_sums.mean(prefix="train_")
                    if bar is not None and "train_images_per_sec" in row:
                        bar.set_postfix(
                            loss=f"{row['train_loss']:.3f}",
                            img_s=f"{row['train_images_per_sec']:.0f}",
                        )
                    writer.write(step, row)
                    log_sums = _Sums()
                if epoch_end:
                    epoch = step // steps_per_epoch
                    summary = epoch_sums.mean(prefix="train_")
                    epoch_sums = _Sums()
                    if epoch % config.eval_every_epochs == 0 or step == total_steps:
                        m = trainer.evaluate(state, val.images, val.labels, config.eval_batch_size)
                        last_eval = _prefixed("val_", m)
                        summary.update(last_eval)
                    summary["elapsed_seconds"] = time.perf_counter() - run_start
                    writer.write(step, {"epoch": epoch, **summary})
                    say(_epoch_line(epoch, config.num_epochs, summary))
                    if epoch % config.checkpoint_every_epochs == 0 or step == total_steps:
                        checkpoints.save(
                            step, trainer.checkpointable(state), _ckpt_metrics(last_eval)
                        )
                    t_last = time.perf_counter()  # evaluation time is not step time
                if stop.signal_name:
                    if pending is not None:
                        resolve(pending)
                    checkpoints.save(step, trainer.checkpointable(state), _ckpt_metrics(last_eval))
                    checkpoints.wait()
                    say(
                        f"received {stop.signal_name}: saved the checkpoint of step {step} in "
                        f"{checkpoints.directory}; run the same command again to resume."
                    )
                    return {"stopped_at_step": step}
        finally:
            if bar is not None:
                bar.close()
            checkpoints.wait()
            writer.flush()

    results = _final_results(config, trainer, state, dataset, num_params, run_start, compile_s)
    writer.write(step, results)
    writer.close()
    if lead:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        plot_curves(workdir)
        say("final: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    return results


def _final_results(config, trainer, state, dataset, num_params, run_start, compile_s):
    flops = models.count_flops(trainer.model, dataset.image_shape)
    results: dict[str, float] = {"num_params": float(num_params), "flops_per_image": flops}
    for split in ("validation", "test"):
        if split in dataset.splits:
            s = dataset.splits[split]
            m = trainer.evaluate(state, s.images, s.labels, config.eval_batch_size)
            key = "val" if split == "validation" else "test"
            results[f"{key}_loss"], results[f"{key}_accuracy"] = m["loss"], m["accuracy"]
            results[f"{key}_error"] = 1.0 - m["accuracy"]
    results["train_seconds"] = time.perf_counter() - run_start
    results["compile_seconds"] = compile_s
    return results


class _Sums:
    def __init__(self):
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, m: dict[str, float]) -> None:
        for k, v in m.items():
            self.total[k] = self.total.get(k, 0.0) + v
            self.count[k] = self.count.get(k, 0) + 1

    def mean(self, prefix: str = "") -> dict[str, float]:
        out = {prefix + k: self.total[k] / self.count[k] for k in self.total}
        if prefix + "learning_rate" in out:
            out["learning_rate"] = out.pop(prefix + "learning_rate")
        return out


def _prefixed(prefix: str, m: dict[str, float]) -> dict[str, float]:
    return {prefix + k: v for k, v in m.items()}


def _ckpt_metrics(last_eval: dict[str, float]) -> dict[str, float] | None:
    return {"val_accuracy": last_eval["val_accuracy"]} if last_eval else None


def _epoch_line(epoch: int, num_epochs: int, m: dict[str, float]) -> str:
    parts = [f"epoch {epoch}/{num_epochs}"]
    for key, fmt in (
        ("train_loss", "{:.4f}"),
        ("train_accuracy", "{:.3f}"),
        ("val_loss", "{:.4f}"),
        ("val_accuracy", "{:.3f}"),
        ("learning_rate", "{:.3g}"),
        ("train_images_per_sec", "{:.0f}"),
    ):
        if key in m:
            parts.append(f"{key.replace('train_images_per_sec', 'img/s')} {fmt.format(m[key])}")
    return "  ".join(parts)


def load_run(
    workdir: str,
    *,
    step: int | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
):
    """A finished or interrupted run, rebuilt from its ``config.json`` and checkpoint.

    Returns ``(config, trainer, state, data)``; ``dataset``/``data_dir`` swap the data (same
    image shape and number of classes).
    """
    import ml_collections

    from cnnjax.train.config import default_config

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a run?")
    with open(path) as f:
        saved = json.load(f)
    config = default_config()
    config.update(ml_collections.ConfigDict(_tuples(saved)))
    if dataset is not None:
        config.dataset = dataset
    if data_dir is not None:
        config.data_dir = data_dir
    data, norm = load_data(config)
    trainer = build_trainer(config, data, norm)
    with Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints) as ckpts:
        state = trainer.from_checkpoint(
            ckpts.restore(trainer.checkpointable(trainer.init_state()), step)
        )
    return config, trainer, state, data


def evaluate_checkpoint(
    workdir: str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Accuracy of a run's checkpoint (latest, or ``step``) on any dataset split.

    ``split`` defaults to ``test`` when the dataset has one, else ``validation``.
    """
    config, trainer, state, data = load_run(workdir, step=step, dataset=dataset, data_dir=data_dir)
    split = split or ("test" if "test" in data.splits else "validation")
    if split not in data.splits:
        raise ValueError(f"`split` must be one of {sorted(data.splits)}, got {split!r}.")
    s = data.splits[split]
    m = trainer.evaluate(state, s.images, s.labels, config.eval_batch_size)
    return {
        "workdir": workdir,
        "dataset": config.dataset,
        "split": split,
        "step": int(trainer.step_of(state)),
        "examples": len(s),
        **m,
    }


def _tuples(d):
    """JSON turns tuples into lists; the config's tuple fields want tuples back."""
    if isinstance(d, dict):
        return {k: _tuples(v) for k, v in d.items()}
    if isinstance(d, list):
        return tuple(d)
    return d
