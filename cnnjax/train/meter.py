"""A run's step metrics on their way to the logs, and where its wall time goes.

The loop hands :class:`Meter` each step's metrics as the step returns them: arrays still being
computed. Nothing waits for them then; the host may dispatch ``steps_in_flight`` steps beyond
the last one the device finished. Every ``CHUNK`` steps, and when a row is logged, the steps'
metrics are stacked on the device (one dispatch) and their copy to the host is started; a row
is read a row later (or at once where the loop must know: the end of an epoch, a signal, the
last step), so logging never drains the device's queue. The sums are taken in float64 on the
host in step order: the same numbers the loop logged when it fetched every step's metrics (a
float32 sum on the device would change them).

Timing, in seconds (:meth:`Meter.timing`): ``compile`` is the process's first step (dispatch
to result); ``steps`` the wall time of every other step, of which ``wait`` is time the host
spent blocked on the device (the queue of steps in flight was full) and the rest is the host's
own: dispatching, the input feed, bookkeeping. ``step_device`` is the device time of the
steps where it can be read off: when the host blocked on two consecutive steps, the second ran
from the first's end to its own (it was queued), so the interval is its device time; steps not
seen that way are counted at the median of those that were. ``log`` is the time spent writing
rows.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import NonFiniteLossError

# Steps' metrics are stacked in chunks of this many, the last one padded: one compiled stack
# per process whatever the row lengths, and one dispatch per chunk.
CHUNK = 32


@jax.jit
def _stack(steps: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """CHUNK steps' metrics as one array per name: (CHUNK,)."""
    return {k: jnp.stack([m[k] for m in steps]) for k in steps[0]}


def _chunk(steps: list[dict[str, jax.Array]]) -> tuple[dict[str, jax.Array], int]:
    """Up to CHUNK steps' metrics stacked on the device, their copy to the host started."""
    stacked = _stack(steps + steps[-1:] * (CHUNK - len(steps)))
    for v in stacked.values():
        v.copy_to_host_async()
    return stacked, len(steps)


@dataclasses.dataclass
class _Row:
    first: int  # the row's first and last step
    last: int
    chunks: list[tuple[dict[str, jax.Array], int]]  # stacked metrics, on their way to the host
    start: float | None  # when its first timed step could start; None: the previous row's end
    timed: int  # its steps, the compile step excluded


class _Sums:
    """Running float64 sums of per-step values, added in step order."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.seconds, self.timed = 0.0, 0

    def add(self, values: dict[str, np.ndarray], seconds: float, timed: int) -> None:
        for k, v in values.items():
            total = self.total.get(k, 0.0)
            for x in v.tolist():
                total += x
            self.total[k], self.count[k] = total, self.count.get(k, 0) + len(v)
        self.seconds, self.timed = self.seconds + seconds, self.timed + timed

    def mean(self, batch_size: int) -> dict[str, float]:
        out = {"train_" + k: self.total[k] / self.count[k] for k in self.total}
        if "train_learning_rate" in out:
            out["learning_rate"] = out.pop("train_learning_rate")
        if self.timed:
            out["train_step_time"] = self.seconds / self.timed
            out["train_images_per_sec"] = batch_size * self.timed / self.seconds
        return out


class Meter:
    """Step metrics kept on the device until a row is logged; the loop's clock.

    A row's step time runs from the end of the row before it (or from a restart of the clock)
    to when its last step was seen finished: the host sees a step finish when it pops it from
    the queue of steps in flight, so rows are paced by the device, not by when the host got
    round to logging them.

    Args:
      first_step: the step the process starts from.
      batch_size: the global batch, for images per second.
      steps_in_flight: steps the host may run ahead of the device.
      kept: () -> a sentence naming the last good checkpoint, for the non-finite-loss error.
    """

    def __init__(
        self, first_step: int, batch_size: int, steps_in_flight: int, kept: Callable[[], str]
    ):
        self.first_step, self.batch_size, self.kept = first_step, batch_size, kept
        self.limit = steps_in_flight
        self.queue: collections.deque[tuple[int, jax.Array]] = collections.deque()
        self.done: dict[int, float] = {}  # step -> when the host saw it finished
        self.steps: list[dict[str, jax.Array]] = []  # of the row's chunk being filled
        self.chunks: list[tuple[dict[str, jax.Array], int]] = []  # the row's full chunks
        self.row_start = time.perf_counter()  # host time: where the steps' seconds count from
        self.start: float | None = None  # the next row's start, when not the last row's end
        self.last_end = self.row_start
        self.timed = self.total_timed = 0
        self.pending: _Row | None = None
        self.epoch = _Sums()
        self.seconds = collections.Counter(compile=0.0, steps=0.0, wait=0.0, log=0.0)
        self.device: list[float] = []  # device times read off consecutive blocked waits
        self.completed: tuple[int, float] | None = None  # (step, when) of the last blocked wait

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Records the metrics of ``step``; waits only for the compile step and when the
        queue of steps in flight is full."""
        self.steps.append(metrics)
        if len(self.steps) == CHUNK:
            self.chunks.append(_chunk(self.steps))
            self.steps = []
        marker = metrics["loss"]
        if step == self.first_step + 1:  # the process's first step: compilation, then the step
            marker.block_until_ready()
            now = time.perf_counter()
            self.seconds["compile"] += now - self.row_start
            self.row_start = self.start = now
            return
        self.timed += 1
        self.total_timed += 1
        self.queue.append((step, marker))
        if len(self.queue) > self.limit:
            self._wait(*self.queue.popleft())

    def _wait(self, step: int, marker: jax.Array) -> None:
        if marker.is_ready():  # the device is ahead: nothing to wait for, no completion seen
            self.done[step], self.completed = time.perf_counter(), None
            return
        begun = time.perf_counter()
        marker.block_until_ready()
        now = self.done[step] = time.perf_counter()
        self.seconds["wait"] += now - begun
        if self.completed is not None and self.completed[0] == step - 1:
            self.device.append(now - self.completed[1])
        self.completed = (step, now)

    @contextlib.contextmanager
    def row(self, step: int, now: bool):
        """Ends the metrics row at ``step``; yields the rows ready to log, as (last step,
        means): the previous row, and this one too when ``now`` (after waiting for its steps).
        What the body does counts as logging.

        Raises:
          NonFiniteLossError: a step's loss or accuracy is not finite; names the first.
        """
        if now:
            while self.queue:  # the device finishes the row: step time, not logging
                self._wait(*self.queue.popleft())
        begun = time.perf_counter()
        self.seconds["steps"] += begun - self.row_start
        self.completed = None  # device intervals are read within a row only
        chunks = self.chunks + ([_chunk(self.steps)] if self.steps else [])
        first = step - sum(n for _, n in chunks) + 1
        row = _Row(first, step, chunks, self.start, self.timed) if chunks else None
        self.steps, self.chunks, self.timed, self.start = [], [], 0, None
        ready = [r for r in (self.pending, row if now else None) if r is not None]
        self.pending = None if now else row
        try:
            yield [(r.last, self._read(r)) for r in ready]
        finally:
            self.row_start = time.perf_counter()
            self.seconds["log"] += self.row_start - begun

    def _read(self, row: _Row) -> dict[str, float]:
        chunks = jax.device_get([c for c, _ in row.chunks])
        values = {
            k: np.concatenate([c[k][:n] for c, (_, n) in zip(chunks, row.chunks, strict=True)])
            for k in chunks[0]
        }
        for name in ("loss", "accuracy"):
            bad = np.flatnonzero(~np.isfinite(values[name]))
            if bad.size:
                raise NonFiniteLossError(
                    f"training stopped at step {row.last}: the train {name} is "
                    f"{values[name][bad[0]]} (not finite) from step {row.first + bad[0]} on. "
                    f"{self.kept()}; lower `learning_rate` or set `grad_clip_norm`."
                )
        seconds = 0.0
        if row.timed:  # (a row of the compile step alone has no step time)
            start = self.last_end if row.start is None else row.start
            # A row read before its last step left the queue (rows shorter than
            # steps_in_flight) ends when it is read.
            self.last_end = self.done.get(row.last, time.perf_counter())
            seconds = self.last_end - start
        self.done = {s: t for s, t in self.done.items() if s > row.last}
        self.epoch.add(values, seconds, row.timed)
        sums = _Sums()
        sums.add(values, seconds, row.timed)
        return sums.mean(self.batch_size)

    def epoch_row(self) -> dict[str, float]:
        """The means of the epoch's steps (every row logged, ``now`` at its last)."""
        row, self.epoch = self.epoch.mean(self.batch_size), _Sums()
        return row

    def restart_clock(self) -> None:
        """Time spent outside the steps (evaluation, checkpoints) is not step time."""
        self.row_start = self.start = time.perf_counter()
        self.completed = None

    def timing(self) -> dict[str, float]:
        """This process's seconds so far: compile, steps, wait, log and (where the host saw
        the device working) step_device."""
        out = dict(self.seconds)
        if self.device:
            unseen = self.total_timed - len(self.device)
            out["step_device"] = sum(self.device) + unseen * statistics.median(self.device)
        return out


def process_age() -> float | None:
    """Seconds since this process started, its imports included (Linux; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:  # field 22: start time in clock ticks after boot
            start_ticks = float(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None
