"""The training loop's own cost per step: the real ``train_and_evaluate`` against its step.

    python -m experiments.bench_loop                 # the tiny model: what is left is the loop
    python -m experiments.bench_loop --repeats=5 --steps=2000

Trains a network so small that its step costs almost nothing (All-CNN-A at width 1/16 on
12×12 digits, batch 16) with the real loop, in a fresh workdir per run, with the progress bar
on and off and a log row every step and every ``--log_every`` steps; evaluation and
checkpoints only at the end. Its per-step time is the run's ``steps_seconds + log_seconds``
(``timing.json``) over its steps, compilation excluded. The step itself is timed as the same
compiled step dispatched back to back (nothing between the steps), the fastest any loop can
drive it; the loop's overhead is the difference, in microseconds. The settings' runs and the
step alone are interleaved ``--repeats`` times; each figure is the median over the repeats
(the overhead: of the per-repeat differences). The progress bar draws to a terminal-like
sink (``os.devnull``), so that it does the work it does on a terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import jax
from absl import app, flags

from cnnjax import train
from cnnjax.data import load_dataset, preprocess
from experiments import _bench
from experiments._cli import quiet_unless_verbose
from experiments.configs import allcnn

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 1000, "Training steps per run.")
flags.DEFINE_integer("repeats", 3, "Runs per setting (the median is reported).")
flags.DEFINE_integer("log_every", 100, "The sparse logging setting: a row every N steps.")
flags.DEFINE_integer("steps_in_flight", None, "Override config.steps_in_flight.")


def tiny_config(steps: int, log_every: int, progress: bool):
    """All-CNN-A, width 1/16, 12×12 digits, batch 16, ``steps`` steps; evaluation and
    checkpoints only at the end."""
    c = allcnn.get_config("quick")
    c.update(dict(model="all_cnn_a", width=1 / 16, image_size=12, crop_padding=0, batch_size=16))
    steps_per_epoch = 1294 // c.batch_size  # digits' training split after the held-out 10 %
    c.num_epochs = steps / steps_per_epoch
    c.eval_every_epochs = c.checkpoint_every_epochs = 10**6  # only at the end
    c.log_every_steps, c.progress = log_every, progress
    if FLAGS.steps_in_flight:
        c.steps_in_flight = FLAGS.steps_in_flight
    return c


class _Terminal:
    """A sink that says it is a terminal, so the progress bar draws (to os.devnull)."""

    def __init__(self):
        self.sink = open(os.devnull, "w")

    def write(self, text: str) -> int:
        return self.sink.write(text)

    def flush(self) -> None:
        self.sink.flush()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.sink.fileno()


def loop_seconds_per_step(config) -> float:
    """One run of the real loop in a fresh workdir: its steps' and log rows' seconds over
    the steps it timed (the first, compiling, excluded)."""
    with tempfile.TemporaryDirectory() as workdir:
        terminal = _Terminal()
        with contextlib.redirect_stderr(terminal), contextlib.redirect_stdout(terminal.sink):
            train.train_and_evaluate(config, workdir)
        terminal.sink.close()
        with open(os.path.join(workdir, "timing.json")) as f:
            timing = json.load(f)
        last = max(timing, key=int)
    return (timing[last]["steps_seconds"] + timing[last]["log_seconds"]) / (int(last) - 1)


class StepAlone:
    """The run's compiled step on the same data, dispatched back to back."""

    def __init__(self, config):
        dataset, norm = preprocess(load_dataset("digits", image_size=12), config.preprocess)
        self.engine = train.build_engine(config, dataset, norm)
        self.state = self.engine.init()
        split = dataset.splits["train"]
        self.data = self.engine.put_dataset(split.images, split.labels)

    def seconds_per_step(self, steps: int) -> float:
        def run():
            for _ in range(steps):
                self.state, metrics = self.engine.train_step(self.state, *self.data)
            return metrics

        return _bench.median_seconds(run, repeats=1) / steps


def main(argv):
    del argv
    quiet_unless_verbose()
    # Every run builds its steps afresh; the cache makes the later ones load them.
    with tempfile.TemporaryDirectory() as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        settings = [(p, n) for p in (False, True) for n in (1, FLAGS.log_every)]
        alone = StepAlone(tiny_config(FLAGS.steps, FLAGS.log_every, False))
        bases, loops = [], {s: [] for s in settings}
        for _ in range(FLAGS.repeats):  # interleaved: a slow spell of the machine hits all
            bases.append(alone.seconds_per_step(FLAGS.steps))
            for progress, log_every in settings:
                config = tiny_config(FLAGS.steps, log_every, progress)
                loops[progress, log_every].append(loop_seconds_per_step(config))
    base = statistics.median(bases)
    rows = []
    for (progress, log_every), runs in loops.items():
        overhead = statistics.median(r - b for r, b in zip(runs, bases, strict=True))
        rows.append(
            [
                "on" if progress else "off",
                log_every,
                f"{statistics.median(runs) * 1e6:.0f}",
                f"{overhead * 1e6:.0f}",
            ]
        )
    print(
        f"bench_loop: {FLAGS.steps} steps of the tiny model per run, the step alone "
        f"{base * 1e6:.0f} us (dispatched back to back); medians of {FLAGS.repeats} interleaved "
        f"runs; {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(
        _bench.markdown_table(
            ["progress bar", "log every", "loop us/step", "overhead us/step"], rows
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
