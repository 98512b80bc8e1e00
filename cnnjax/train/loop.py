"""``train_and_evaluate(config, workdir)``: the training loop behind ``experiments/train.py``.

The workdir is the run: ``config.json``, ``metrics.jsonl``, TensorBoard events, Orbax
checkpoints and ``results.json``. Calling it again on the same workdir resumes from the
latest checkpoint. SIGINT/SIGTERM write a checkpoint and return; a non-finite loss stops the
run naming the step, keeping the last good checkpoint.

Stages, in order: data; model and compiled steps; restore (or initialise); the epoch loop
(:func:`_train`), with :func:`_end_of_epoch` for evaluation and checkpoints; final results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
from tqdm import tqdm

from cnnjax import models
from cnnjax.data import Dataset
from cnnjax.data import stream as streaming
from cnnjax.errors import DataError, NonFiniteLossError
from cnnjax.train import workdir as workdir_lib
from cnnjax.train.build import build_engine, choose_input, initial_state, load_data, stream_spec
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import validate_config
from cnnjax.train.engine import Engine, evaluate
from cnnjax.train.feed import DeviceFeed, StreamFeed, evaluate_stream
from cnnjax.train.metrics import MetricWriter
from cnnjax.train.plots import plot_curves
from cnnjax.train.step import TrainState, unseen_views


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns results."""
    validate_config(config)
    lead = jax.process_index() == 0  # multi-host: process 0 locks and writes the records
    if lead:
        workdir_lib.prepare(workdir)
    else:
        os.makedirs(workdir, exist_ok=True)
    with workdir_lib.WorkdirLock(workdir, enabled=lead):
        checkpoint_dir = os.path.join(workdir, "checkpoints")
        if lead:  # before any data is loaded: a changed config is refused at once
            workdir_lib.check_config(workdir, config, _has_checkpoints(checkpoint_dir))
        started = time.perf_counter()
        source, why = choose_input(config)  # data
        dataset, norm = load_data(config, source)
        data_seconds = time.perf_counter() - started
        if lead:
            resuming = _has_checkpoints(checkpoint_dir)
            workdir_lib.save_data_info(workdir, dataset, norm, source, resuming)
        engine = build_engine(config, dataset, norm)  # model and compiled steps
        stream = source == "stream"
        with Checkpoints(checkpoint_dir, config.keep_checkpoints, with_input=stream) as ckpts:
            latest, saved_input = ckpts.latest_step(), None
            if latest is None:
                state = initial_state(config, engine, dataset, norm)
            else:  # raises CheckpointError before anything is written
                state = engine.restored(ckpts.restore(engine.saved(engine.init())))
                saved_input = ckpts.restore_input(latest) if stream else None
            run = _Run(config, workdir, engine, dataset, ckpts, lead, time.perf_counter())
            run.data_seconds, run.input_line = data_seconds, f"input: {source} ({why})"
            run.saved_input = saved_input
            if run.start(state):
                return run.finished_results()
            with _StopRequest() as stop:
                state, stopped = _train(run, state, stop)
            if stopped:
                return {"stopped_at_step": stopped}
        return _finish(run, state)


def _has_checkpoints(directory: str) -> bool:
    return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


@dataclasses.dataclass
class _Run:
    """What the stages of one run share: its inputs and where its outputs go."""

    config: Any
    workdir: str
    engine: Engine
    dataset: Dataset
    checkpoints: Checkpoints
    lead: bool  # process 0 of a multi-host run writes the logs
    started: float  # perf_counter() at the start of this process's part of the run
    writer: MetricWriter | None = None
    first_step: int = 0
    num_params: int = 0
    data_seconds: float = 0.0
    eval_seconds: float = 0.0  # this process's per-epoch evaluations (not training time)
    prior: dict[str, float] = dataclasses.field(default_factory=dict)  # earlier processes'
    meter: _Meter | None = None
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)
    input_line: str = ""  # where batches come from, and why
    saved_input: dict | None = None  # the input state of the checkpoint resumed from
    feed: DeviceFeed | StreamFeed | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.engine.fns.cfg.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.engine.fns.cfg.total_steps

    def say(self, line: str) -> None:
        if self.lead:
            tqdm.write(line)

    def start(self, state: TrainState) -> bool:
        """Announces the run and opens the metric writer; on resume, drops history past the
        restored step and picks up the time spent so far. Returns True when the run has
        already finished (nothing to do)."""
        saved = self.engine.saved(state)
        self.first_step = int(jax.device_get(saved.step))
        self.num_params = models.count_params(saved.params)
        results = os.path.join(self.workdir, "results.json")
        if self.first_step >= self.total_steps and os.path.exists(results):
            self.say(f"{self.workdir} finished at step {self.first_step}; results in {results}.")
            return True
        self.prior = workdir_lib.load_timing(self.workdir, self.first_step)
        if self.lead:  # also at step 0: rows of a start that died before its first checkpoint
            dropped, torn = workdir_lib.truncate_history(self.workdir, self.first_step)
            if dropped:
                self.say(
                    f"dropped {dropped} metric rows past step {self.first_step} (written "
                    "after its checkpoint)."
                )
            if torn:
                self.say(
                    "warning: the last line of metrics.jsonl was cut short (a crash or a full "
                    "disk during a write); it is dropped."
                )
        self.say(
            f"{self.dataset.summary()}\n{self.input_line}\nmodel {self.config.model}: "
            f"{self.num_params:,} parameters; {self.engine.num_devices} device(s); "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} total"
            + (f"; resuming at step {self.first_step}" if self.first_step else "")
        )
        self.writer = MetricWriter(self.workdir, enabled=self.lead)
        return False

    def finished_results(self) -> dict[str, float]:
        path = os.path.join(self.workdir, "results.json")
        return workdir_lib.read_json(path, "remove it to evaluate the finished run again.")

    def timing(self) -> dict[str, float]:
        """Seconds of the whole run so far, over this process and the ones it resumed:
        training (compilation and per-epoch evaluations excluded), compilation (the first step
        of each process) and per-epoch evaluation."""
        first = self.meter.compile_seconds if self.meter else 0.0  # the process's first step
        now = time.perf_counter() - self.started - self.eval_seconds - first
        waited, started = (self.feed.wait_seconds, self.feed.start_seconds) if self.feed else (0, 0)
        return {
            "train_seconds": self.prior["train_seconds"] + now,
            # Less the wait for the input workers to start (reported as data loading).
            "compile_seconds": self.prior["compile_seconds"] + max(0.0, first - started),
            "eval_seconds": self.prior["eval_seconds"] + self.eval_seconds,
            "input_wait_seconds": self.prior.get("input_wait_seconds", 0.0) + waited,
        }

    def evaluate(self, state: TrainState, split: str, tta: bool = False) -> dict[str, float]:
        """Mean loss and accuracy of ``split``, held on the host or streamed."""
        data, batch_size = self.dataset.splits[split], self.config.eval_batch_size
        if isinstance(self.dataset, streaming.StreamDataset):
            spec = stream_spec(self.config, self.dataset)
            return evaluate_stream(self.engine, state, data, spec, batch_size, tta)
        return evaluate(self.engine, state, data.images, data.labels, batch_size, tta)

    def open_feed(self) -> DeviceFeed | StreamFeed:
        """The training batches of this process, from the restored step on."""
        train = self.dataset.splits["train"]
        if not isinstance(self.dataset, streaming.StreamDataset):
            return DeviceFeed(self.engine, train)
        workers = self.config.input_workers
        feed = StreamFeed(
            self.engine,
            train,
            stream_spec(self.config, self.dataset),
            first_step=self.first_step,
            total_steps=self.total_steps,
            workers=streaming.default_workers() if workers is None else workers,
            saved=self.saved_input,
        )
        if feed.note:
            self.say(feed.note)
        return feed

    def save(self, step: int, state: TrainState) -> None:
        metrics = {"val_accuracy": self.last_eval["val_accuracy"]} if self.last_eval else None
        input_state = self.feed.state() if self.feed else None
        self.checkpoints.save(step, self.engine.saved(state), metrics, input_state)
        if self.lead:
            workdir_lib.save_timing(self.workdir, step, self.timing())


class _Meter:
    """Step times and running means of the step metrics, for log rows and epoch summaries.

    Metrics arrive one step behind the dispatch (waiting for them is what synchronises); the
    time between two arrivals is one step's time, except for the first step of the process,
    which includes compilation and is reported as ``compile_seconds`` instead.
    """

    def __init__(self, first_step: int, batch_size: int):
        self.first_step, self.batch_size = first_step, batch_size
        self.last = time.perf_counter()
        self.compile_seconds = 0.0
        self.epoch, self.log = _Sums(), _Sums()

    def add(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        if step == self.first_step + 1:
            self.compile_seconds = elapsed
        else:
            metrics = {**metrics, "step_time": elapsed, "images_per_sec": self.batch_size / elapsed}
        self.epoch.add(metrics)
        self.log.add(metrics)

    def restart_clock(self) -> None:
        """Time spent outside the steps (evaluation, checkpoints) is not step time."""
        self.last = time.perf_counter()

    def log_row(self) -> dict[str, float]:
        row, self.log = self.log.mean(prefix="train_"), _Sums()
        return row

    def epoch_row(self) -> dict[str, float]:
        row, self.epoch = self.epoch.mean(prefix="train_"), _Sums()
        return row


def _train(run: _Run, state: TrainState, stop: _StopRequest) -> tuple[TrainState, int]:
    """The epoch loop. Returns the final state and the step it stopped at on a signal (else 0)."""
    config = run.config
    feed = run.feed = run.open_feed()
    meter = run.meter = _Meter(run.first_step, config.batch_size)
    # Off when stderr is not a terminal (nohup, a cluster's log): its carriage-return updates
    # would fill the file; the log rows say the same.
    bar = _ProgressBar(run, enabled=run.lead and config.progress and sys.stderr.isatty())
    step, pending = run.first_step, None
    try:
        while step < run.total_steps:
            try:
                state, metrics = feed.step(state)
            except DataError:
                if not stop.signal_name:
                    raise
                # A SIGTERM to the whole process group (a cluster's scheduler) ends the input
                # workers too; the state of `step` is whole, so it is saved as on any signal.
                _save_on_signal(run, state, step, stop.signal_name)
                return state, step
            step += 1
            if pending is not None:
                meter.add(*_checked(run, *pending))
            pending = (step, metrics)
            bar.update(step)
            epoch_end = step % run.steps_per_epoch == 0 or step == run.total_steps
            if step % config.log_every_steps == 0 or epoch_end or stop.signal_name:
                meter.add(*_checked(run, *pending))
                pending = None
                row = meter.log_row()
                bar.show(row)
                run.writer.write(step, row)
            if epoch_end:
                _end_of_epoch(run, state, step, meter.epoch_row())
                meter.restart_clock()
            if stop.signal_name:
                _save_on_signal(run, state, step, stop.signal_name)
                return state, step
    finally:
        bar.close()
        feed.close()
        run.checkpoints.wait()
        run.writer.flush()
    return state, 0


def _checked(run: _Run, step: int, metrics) -> tuple[int, dict[str, float]]:
    """The step's metrics on the host; raises NonFiniteLossError if the loss diverged."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    for name in ("loss", "accuracy"):
        if not math.isfinite(metrics[name]):
            raise NonFiniteLossError(
                f"training stopped at step {step}: the train {name} is {metrics[name]} (not "
                f"finite). The last good checkpoint (step {run.checkpoints.latest_step()}) is "
                f"kept in {run.checkpoints.directory}; lower `learning_rate` or set "
                "`grad_clip_norm`."
            )
    return step, metrics


def _end_of_epoch(run: _Run, state: TrainState, step: int, summary: dict[str, float]) -> None:
    """Evaluates (every ``eval_every_epochs``), logs the epoch and checkpoints."""
    config, epoch = run.config, -(-step // run.steps_per_epoch)  # a last partial epoch counts
    last = step == run.total_steps
    if (epoch % config.eval_every_epochs == 0 or last) and "validation" in run.dataset.splits:
        begun = time.perf_counter()
        m = run.evaluate(state, "validation")
        run.eval_seconds += time.perf_counter() - begun
        run.last_eval = {"val_" + k: v for k, v in m.items()}
        summary.update(run.last_eval)
    summary["elapsed_seconds"] = run.timing()["train_seconds"]  # the whole run's, so far
    run.writer.write(step, {"epoch": epoch, **summary})
    run.say(_epoch_line(epoch, config.num_epochs, summary))
    if run.feed.skipped:
        run.say(
            f"skipped {run.feed.skipped} image(s) that cannot be decoded so far (each replaced "
            "by the next example of its epoch's order)."
        )
    if epoch % config.checkpoint_every_epochs == 0 or last:
        run.save(step, state)


def _save_on_signal(run: _Run, state: TrainState, step: int, signal_name: str) -> None:
    run.save(step, state)
    run.checkpoints.wait()
    run.say(
        f"received {signal_name}: saved the checkpoint of step {step} in "
        f"{run.checkpoints.directory}; run the same command again to resume."
    )


def _finish(run: _Run, state: TrainState) -> dict[str, float]:
    """Final evaluation of every held-out split; writes ``results.json`` and ``curves.png``."""
    config, engine = run.config, run.engine
    flops = models.count_flops(engine.fns.model, run.dataset.image_shape)
    results: dict[str, float] = {"num_params": float(run.num_params), "flops_per_image": flops}
    note = unseen_views(config.tta, config.flip, config.crop_padding)
    if note:
        run.say(f"warning: {note}")
    for split, key in (("validation", "val"), ("test", "test")):
        if split in run.dataset.splits:
            m = run.evaluate(state, split)
            results[f"{key}_loss"], results[f"{key}_accuracy"] = m["loss"], m["accuracy"]
            results[f"{key}_error"] = 1.0 - m["accuracy"]
            if "top5_accuracy" in m:
                results[f"{key}_top5_accuracy"] = m["top5_accuracy"]
            if config.tta != "none":
                results[f"{key}_tta_accuracy"] = run.evaluate(state, split, tta=True)["accuracy"]
    # Like airbench: training plus the final evaluation, not the per-epoch evaluations nor
    # compilation; over the whole run, resumed segments included.
    timing = run.timing()
    results["train_seconds"] = timing["train_seconds"]
    results["compile_seconds"] = timing["compile_seconds"]
    results["data_seconds"] = run.data_seconds + (run.feed.start_seconds if run.feed else 0.0)
    results["input_wait_seconds"] = timing["input_wait_seconds"]
    run.writer.write(run.total_steps, results)
    run.writer.close()
    if run.lead:
        with open(os.path.join(run.workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        plot_curves(run.workdir)
        run.say("final: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    return results


class _ProgressBar:
    """A tqdm bar that appears after the first step (compilation) and shows loss and img/s."""

    def __init__(self, run: _Run, enabled: bool):
        self.run, self.enabled, self.bar = run, enabled, None

    def update(self, step: int) -> None:
        if self.bar is None and step == self.run.first_step + 2:
            self.bar = tqdm(
                total=self.run.total_steps,
                initial=step - 1,
                unit="step",
                disable=not self.enabled,
                dynamic_ncols=True,
                leave=False,
            )
        if self.bar is not None:
            self.bar.update(1)

    def show(self, row: dict[str, float]) -> None:
        if self.bar is not None and "train_images_per_sec" in row:
            self.bar.set_postfix(
                loss=f"{row['train_loss']:.3f}", img_s=f"{row['train_images_per_sec']:.0f}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Callable | int | None] = {}

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


def _epoch_line(epoch: int, num_epochs: float, m: dict[str, float]) -> str:
    parts = [f"epoch {epoch}/{math.ceil(num_epochs)}"]
    for key, fmt in (
        ("train_loss", "{:.4f}"),
        ("train_accuracy", "{:.3f}"),
        ("val_loss", "{:.4f}"),
        ("val_accuracy", "{:.3f}"),
        ("val_top5_accuracy", "{:.3f}"),
        ("learning_rate", "{:.3g}"),
        ("train_images_per_sec", "{:.0f}"),
    ):
        if key in m:
            parts.append(f"{key.replace('train_images_per_sec', 'img/s')} {fmt.format(m[key])}")
    return "  ".join(parts)
