"""``train_and_evaluate(config, workdir)``: the training loop behind ``experiments/train.py``.

The workdir is the run: ``config.json``, ``metrics.jsonl``, TensorBoard events, Orbax
checkpoints and ``results.json``. Calling it again on the same workdir resumes from the
latest checkpoint. SIGINT/SIGTERM write a checkpoint and return; a non-finite loss stops the
run naming the step, keeping the last good checkpoint.

Stages, in order: data; model and compiled steps; restore (or initialise); the epoch loop
(:func:`_train`), with :func:`_end_of_epoch` for evaluation and checkpoints; final results.
"""

from __future__ import annotations

import contextlib
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
from cnnjax.errors import DataError
from cnnjax.train import workdir as workdir_lib
from cnnjax.train.build import build_engine, choose_input, initial_state, load_data, stream_spec
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import validate_config
from cnnjax.train.engine import Engine, eval_batches, evaluate_batches
from cnnjax.train.feed import DeviceFeed, StreamFeed, evaluate_stream
from cnnjax.train.meter import Meter, process_age
from cnnjax.train.metrics import MetricWriter
from cnnjax.train.plots import plot_curves
from cnnjax.train.step import TrainState, unseen_views


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns results."""
    entered, before_run = time.perf_counter(), _before_first_run()
    parsed = validate_config(config)
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
        engine = build_engine(config, dataset, norm, parsed=parsed.groups)  # compiled steps
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
            run.before_run_seconds, run.profile = before_run, parsed.profile
            run.setup_seconds = run.started - entered - data_seconds
            run.saved_input = saved_input
            if run.start(state):
                return run.finished_results()
            with _StopRequest() as stop:
                state, stopped = _train(run, state, stop)
            if stopped:
                return {"stopped_at_step": stopped}
        return _finish(run, state)


_PROCESS_TIMED = []  # whether this process has reported its time before its first run


def _before_first_run() -> float:
    """The process's age at its first run (imports, flags); 0 for later runs in it."""
    if _PROCESS_TIMED:
        return 0.0
    _PROCESS_TIMED.append(True)
    return process_age() or 0.0


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
    setup_seconds: float = 0.0  # model and initial (or restored) state
    before_run_seconds: float = 0.0  # the process before train_and_evaluate (imports, flags)
    eval_seconds: float = 0.0  # this process's per-epoch evaluations (not training time)
    checkpoint_seconds: float = 0.0
    prior: dict[str, float] = dataclasses.field(default_factory=dict)  # earlier processes'
    meter: Meter | None = None
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)
    last_eval_step: int = -1  # the step last_eval was measured at
    input_line: str = ""  # where batches come from, and why
    saved_input: dict | None = None  # the input state of the checkpoint resumed from
    feed: DeviceFeed | StreamFeed | None = None
    eval_data: dict[str, list] = dataclasses.field(default_factory=dict)  # split -> batches
    profile: tuple[int, int] | None = None  # the steps to trace (config.profile_steps)

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
        """Seconds of the whole run so far, over this process and the ones it resumed.

        ``train_seconds`` is training as airbench counts it (compilation and per-epoch
        evaluations excluded). The rest split the wall time: ``before_run_seconds`` (the
        process before ``train_and_evaluate``: imports and flags, for a program),
        ``data_seconds`` (loading, decoding, starting input workers), ``setup_seconds``
        (model, initial or restored state), ``compile_seconds`` (each process's first step),
        ``steps_seconds`` (every other step), of which ``device_wait_seconds`` the host spent
        blocked on the device and ``input_wait_seconds`` waiting for streamed batches, with
        ``step_device_seconds`` the steps' device time where it could be read off (see
        :mod:`cnnjax.train.meter`), then ``log_seconds``, ``eval_seconds`` (per-epoch) and
        ``checkpoint_seconds`` (what saving kept the loop waiting)."""
        meter = self.meter.timing() if self.meter else {}
        first = meter.get("compile", 0.0)
        waited, started = (self.feed.wait_seconds, self.feed.start_seconds) if self.feed else (0, 0)
        now = {
            "train_seconds": time.perf_counter() - self.started - self.eval_seconds - first,
            "before_run_seconds": self.before_run_seconds,
            "data_seconds": self.data_seconds + started,
            "setup_seconds": self.setup_seconds,
            # Less the wait for the input workers to start (reported as data loading).
            "compile_seconds": max(0.0, first - started),
            "steps_seconds": meter.get("steps", 0.0),
            "device_wait_seconds": meter.get("wait", 0.0),
            "input_wait_seconds": waited,
            "log_seconds": meter.get("log", 0.0),
            "eval_seconds": self.eval_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
        }
        out = {k: self.prior.get(k, 0.0) + v for k, v in now.items()}
        if "step_device" in meter or "step_device_seconds" in self.prior:
            out["step_device_seconds"] = self.prior.get("step_device_seconds", 0.0) + meter.get(
                "step_device", 0.0
            )
        return out

    def last_good(self) -> str:
        """A sentence naming the last good checkpoint, for errors that stop the run."""
        return (
            f"The last good checkpoint (step {self.checkpoints.latest_step()}) is kept in "
            f"{self.checkpoints.directory}"
        )

    def evaluate(self, state: TrainState, split: str, tta: bool = False) -> dict[str, float]:
        """Mean loss and accuracy of ``split``, held on the host or streamed."""
        data, batch_size = self.dataset.splits[split], self.config.eval_batch_size
        if isinstance(self.dataset, streaming.StreamDataset):
            spec = stream_spec(self.config, self.dataset)
            return evaluate_stream(self.engine, state, data, spec, batch_size, tta)
        if split not in self.eval_data:  # placed once, reused by every evaluation of the run
            self.eval_data[split] = eval_batches(self.engine, data.images, data.labels, batch_size)
        return evaluate_batches(self.engine, state, self.eval_data[split], tta)

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

    def save(self, step: int, state: TrainState, wait: bool = False) -> None:
        """Checkpoints ``step``: the state is copied off the devices now and written in the
        background unless ``wait`` (the next save, or the run's end, waits for it)."""
        begun = time.perf_counter()
        metrics = {"val_accuracy": self.last_eval["val_accuracy"]} if self.last_eval else None
        input_state = self.feed.state() if self.feed else None
        self.checkpoints.save(step, self.engine.saved(state), metrics, input_state, wait=wait)
        self.checkpoint_seconds += time.perf_counter() - begun
        if self.lead:
            workdir_lib.save_timing(self.workdir, step, self.timing())


def _train(run: _Run, state: TrainState, stop: _StopRequest) -> tuple[TrainState, int]:
    """The epoch loop. Returns the final state and the step it stopped at on a signal (else 0).

    The host runs up to ``steps_in_flight`` steps ahead of the device and brings metrics over
    only when a row is logged (:class:`cnnjax.train.meter.Meter`)."""
    config = run.config
    feed = run.feed = run.open_feed()
    meter = run.meter = Meter(
        run.first_step, config.batch_size, config.steps_in_flight, run.last_good
    )
    # Off when stderr is not a terminal (nohup, a cluster's log): its carriage-return updates
    # would fill the file; the log rows say the same.
    bar = _ProgressBar(run, enabled=run.lead and config.progress and sys.stderr.isatty())
    step, trace = run.first_step, _Trace(run)
    try:
        while step < run.total_steps:
            try:
                with trace.around(step + 1):
                    state, metrics = feed.step(state)
            except DataError:
                if not stop.signal_name:
                    raise
                # A SIGTERM to the whole process group (a cluster's scheduler) ends the input
                # workers too; the state of `step` is whole, so it is saved as on any signal.
                _log_rows(run, bar, step, now=True)
                _save_on_signal(run, state, step, stop.signal_name)
                return state, step
            step += 1
            trace.after(step, metrics)
            meter.add(step, metrics)
            bar.update(step)
            epoch_end = step % run.steps_per_epoch == 0 or step == run.total_steps
            if step % config.log_every_steps == 0 or epoch_end or stop.signal_name:
                # What a checkpoint or an epoch's summary follows is read at once; other rows
                # a row later, so that logging never waits for the device.
                _log_rows(run, bar, step, now=epoch_end or bool(stop.signal_name))
            if epoch_end:
                _end_of_epoch(run, state, step, meter.epoch_row())
                meter.restart_clock()
            if stop.signal_name:
                _save_on_signal(run, state, step, stop.signal_name)
                return state, step
    finally:
        trace.close()
        bar.close()
        feed.close()
        run.checkpoints.wait()
        run.writer.flush()
    return state, 0


def _log_rows(run: _Run, bar: _ProgressBar, step: int, now: bool) -> None:
    """Ends the metrics row at ``step`` and writes the rows that are ready."""
    with run.meter.row(step, now) as rows:
        for row_step, row in rows:
            bar.show(row)
            run.writer.write(row_step, row)


def _end_of_epoch(run: _Run, state: TrainState, step: int, summary: dict[str, float]) -> None:
    """Evaluates (every ``eval_every_epochs``), logs the epoch and checkpoints."""
    config, epoch = run.config, -(-step // run.steps_per_epoch)  # a last partial epoch counts
    last = step == run.total_steps
    if (epoch % config.eval_every_epochs == 0 or last) and "validation" in run.dataset.splits:
        begun = time.perf_counter()
        m = run.evaluate(state, "validation")
        run.eval_seconds += time.perf_counter() - begun
        run.last_eval, run.last_eval_step = {"val_" + k: v for k, v in m.items()}, step
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
    run.save(step, state, wait=True)
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
    begun = time.perf_counter()
    for split, key in (("validation", "val"), ("test", "test")):
        if split in run.dataset.splits:
            if split == "validation" and run.last_eval_step == run.total_steps:
                m = {k.removeprefix("val_"): v for k, v in run.last_eval.items()}  # this state's
            else:
                m = run.evaluate(state, split)
            results[f"{key}_loss"], results[f"{key}_accuracy"] = m["loss"], m["accuracy"]
            results[f"{key}_error"] = 1.0 - m["accuracy"]
            if "top5_accuracy" in m:
                results[f"{key}_top5_accuracy"] = m["top5_accuracy"]
            if config.tta != "none":
                results[f"{key}_tta_accuracy"] = run.evaluate(state, split, tta=True)["accuracy"]
    # Like airbench: training plus the final evaluation, not the per-epoch evaluations nor
    # compilation; over the whole run, resumed segments included.
    timing = {**run.timing(), "final_eval_seconds": time.perf_counter() - begun}
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
        run.say(_time_line(timing))
    return results


def _time_line(t: dict[str, float]) -> str:
    """Where the run's wall time went, in seconds (``timing.json``'s fields)."""
    host = t["steps_seconds"] - t["device_wait_seconds"] - t["input_wait_seconds"]
    device = t.get("step_device_seconds")
    return (
        f"time (s): before run {t['before_run_seconds']:.1f}, data {t['data_seconds']:.1f}, "
        f"setup {t['setup_seconds']:.1f}, compile {t['compile_seconds']:.1f}, steps "
        f"{t['steps_seconds']:.1f} (host {host:.2f}, waiting for the device "
        f"{t['device_wait_seconds']:.1f}, for input {t['input_wait_seconds']:.1f}"
        + (f"; the steps' device time {device:.1f}" if device is not None else "")
        + f"), logging {t['log_seconds']:.2f}, evaluation {t['eval_seconds']:.1f}, "
        f"checkpoints {t['checkpoint_seconds']:.2f}, final evaluation {t['final_eval_seconds']:.1f}"
    )


class _Trace:
    """A profiler trace of the steps ``config.profile_steps`` names, in ``<workdir>/profile``:
    started before the first, each step annotated with its number, stopped once the last has
    finished on the device."""

    def __init__(self, run: _Run):
        self.span = run.profile
        self.directory, self.tracing = os.path.join(run.workdir, "profile"), False

    def around(self, step: int):
        """A context for dispatching ``step``: the trace's step annotation while tracing."""
        if self.span and not self.tracing and self.span[0] <= step < self.span[1]:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing = True
        if self.tracing:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def after(self, step: int, metrics) -> None:
        if self.tracing and step == self.span[1] - 1:
            jax.block_until_ready(metrics)
            self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing, self.span = False, None


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
