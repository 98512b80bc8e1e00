"""Metric writers: ``metrics.jsonl`` (one JSON object per line) and TensorBoard event files.

TensorBoard events are written with the ``tensorboard`` package's protobufs and record writer,
on a plain file: its ``EventFileWriter`` would import TensorFlow (for ``gfile``) when installed.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time


class MetricWriter:
    """Appends ``{"step": s, **metrics}`` to ``<workdir>/metrics.jsonl`` and TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        tb_dir = os.path.join(workdir, "tensorboard")
        os.makedirs(tb_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(os.path.join(tb_dir, name), "ab")
        self._tb = RecordWriter(self._file)
        first = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self._tb.write(first.SerializeToString())

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=k, simple_value=float(v))
            for k, v in metrics.items()
            if isinstance(v, int | float)
        ]
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
        self._tb.write(event.SerializeToString())

    def flush(self) -> None:
        if self._tb is not None:
            self._file.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._file.close()
            self._tb = None


def _clean(v):
    v = float(v) if not isinstance(v, str) else v
    return v if isinstance(v, str) or math.isfinite(v) else str(v)


def read_metrics(workdir: str) -> list[dict]:
    """The complete rows of ``metrics.jsonl`` (a last row still being written is left out)."""
    from cnnjax.train.workdir import read_rows

    return read_rows(os.path.join(workdir, "metrics.jsonl"))[1]
