"""What the training loop calls for each step's batch: the device-resident split or a stream.

:class:`DeviceFeed` hands the step the split it holds on the devices (batch ``s`` is drawn
inside the step). :class:`StreamFeed` takes each batch from a grain iterator over steps
(:mod:`cnnjax.data.stream`), checks that it is the batch of the step the state is at, and
puts it on the devices; the iterator's state is saved with every checkpoint, so a resumed
run reads exactly the batches an uninterrupted one would have. :func:`evaluate_stream` is
:func:`cnnjax.train.engine.evaluate` over a streamed split.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from cnnjax.data import stream as streaming
from cnnjax.errors import DataError
from cnnjax.train.engine import Engine
from cnnjax.train.step import eval_means


class DeviceFeed:
    """The training split on the devices; the step draws its batch by (seed, step)."""

    wait_seconds = start_seconds = 0.0  # nothing is waited for: the data is already there
    skipped = 0

    def __init__(self, engine: Engine, train):
        self.engine = engine
        self.data = engine.put_dataset(train.images, train.labels)

    def step(self, state):
        return self.engine.train_step(state, *self.data)

    def state(self) -> None:
        return None

    def close(self) -> None:
        pass


class StreamFeed:
    """Batches read, decoded and augmented by grain workers, one per step.

    ``saved``: the input state of the checkpoint the run resumes from (None on a fresh
    start). It is used as it is when the worker count is the one it was saved with; with
    another count the iterator starts afresh at ``first_step``, which reads the same batches
    (every batch is a function of its step), and ``note`` says so.
    """

    def __init__(
        self,
        engine: Engine,
        source,
        spec: streaming.StreamSpec,
        *,
        first_step: int,
        total_steps: int,
        workers: int,
        saved: dict | None = None,
    ):
        self.engine, self.workers, self.expected = engine, workers, first_step
        # The first batch waits for the workers to start (start-up, not waiting for input).
        self.start_seconds, self.wait_seconds, self.skipped, self.note = 0.0, 0.0, 0, ""
        fn = streaming.TrainBatches(source, spec, jax.process_index(), jax.process_count())
        self.first_step, self.first, state = first_step, first_step, None
        if saved is not None and saved["workers"] == workers:
            self.first, state = saved["first"], saved["grain"]
        elif saved is not None:
            self.note = (
                f"the input state was saved with {saved['workers']} worker(s), this run has "
                f"{workers}: reading from step {first_step} afresh (the same batches)."
            )
        self.iterator = streaming.batches(fn, self.first, total_steps, workers, state)

    def step(self, state):
        """One train step on the next batch: (state, metrics)."""
        begun = time.perf_counter()
        batch = streaming.next_batch(self.iterator)
        waited = time.perf_counter() - begun
        if self.expected == self.first_step:
            self.start_seconds = waited
        else:
            self.wait_seconds += waited
        if int(batch["step"]) != self.expected:
            raise DataError(
                f"the input stream gave the batch of step {int(batch['step'])} for step "
                f"{self.expected}: its saved state does not belong to this checkpoint. Remove "
                "the run's latest checkpoint to resume from the one before."
            )
        self.expected += 1
        self.skipped += int(batch["skipped"])
        return self.engine.train_batch(
            state, *self.engine.put_batch(batch["image"], batch["label"], batch["flip"])
        )

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves: every process iterates the same steps, so one state."""
        return {
            "first": self.first,
            "workers": self.workers,
            "processes": jax.process_count(),
            "grain": self.iterator.get_state(),
        }

    def close(self) -> None:
        self.iterator.close()


def evaluate_stream(
    engine: Engine,
    state,
    source,
    spec: streaming.StreamSpec,
    batch_size: int,
    tta: bool = False,
    threads: int = 1,
) -> dict[str, float]:
    """Mean loss and accuracy over a streamed split: each process decodes its rows of every
    batch (``threads`` decoding threads), the last batch padded and masked, so every example
    counts once however many processes there are."""
    devices = engine.num_devices
    batch_size = max(devices, batch_size // devices * devices)
    fn = streaming.EvalBatches(source, batch_size, spec, jax.process_index(), jax.process_count())
    totals: dict[str, float] = {}
    iterator = streaming.batches(fn, 0, len(fn), workers=0, threads=threads)
    try:  # every batch dispatched as it is decoded, the results read once at the end
        results = [engine.eval_local(state, b["image"], b["label"], tta) for b in iterator]
    finally:
        iterator.close()
    for metrics in jax.device_get(results):
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0) + v
    return eval_means(totals)
