"""The workdir as the record of one run: one writer at a time, its config, its history.

* :class:`WorkdirLock`: an exclusive ``flock`` on ``<workdir>/.lock`` for the life of the
  process (the kernel releases it when the process dies, ``kill -9`` included); a second run
  gets an error naming the holder's pid.
* :func:`check_config`: a run resumes only with the config it was started with; what differs
  is listed, and ``allow_config_change=True`` accepts it and records it.
* :func:`truncate_history`: on resume, ``metrics.jsonl`` rows past the restored step (written
  after the last checkpoint by a run that was then killed) are dropped, so that no step is
  recorded twice.
* :func:`save_timing` / :func:`load_timing`: training and compile seconds so far, kept beside
  each checkpoint so that a resumed run reports the whole run's time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Any

from cnnjax.errors import CheckpointError, ConfigError

# Fields that say how a run is carried out, not what it computes: they may change on resume.
OPERATIONAL = (
    "progress",
    "log_every_steps",
    "steps_in_flight",
    "profile_steps",
    "eval_batch_size",
    "eval_every_epochs",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "num_devices",
    "parallel",
    "data_cache",
    "input_workers",
    "allow_config_change",
)


def prepare(workdir: str) -> None:
    """Creates ``workdir`` and checks that files can be written there, before anything is
    loaded; raises ConfigError naming the problem."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"`workdir` {workdir!r} exists and is not a directory.")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(
            f"`workdir` {workdir!r} cannot be written: {(err.strerror or str(err)).lower()}."
        ) from None


class WorkdirLock:
    """Exclusive lock on a workdir while a run writes to it (``with WorkdirLock(dir): ...``)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path, self.enabled, self.file = os.path.join(workdir, ".lock"), enabled, None

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"  # written by the holder
            self.file.close()
            self.file = None
            raise ConfigError(
                f"{os.path.dirname(self.path)} is in use by {holder}: one run writes a workdir "
                "at a time. Wait for it to finish (or stop it), or use another --workdir."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.truncate(0)  # no holder any more (a killed process leaves its line)
            self.file.close()  # closing releases the lock
            self.file = None


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"field: old -> new"`` for every field that defines the run and differs.

    A field that a later cnnjax added (absent from ``saved``) counts as unchanged when it is
    wanted at its default: new fields default to the behaviour that runs had before them.
    """
    from cnnjax.train.config import default_config

    defaults = json.loads(default_config().to_json_best_effort())
    out = []
    for key in sorted(set(saved) | set(wanted)):
        if key in OPERATIONAL:
            continue
        new = wanted.get(key, "(unset)")
        old = saved.get(key, defaults.get(key, "(unset)"))
        if old != new:
            out.append(f"{key}: {saved.get(key, '(unset)')!r} -> {new!r}")
    return out


def check_config(workdir: str, config, resuming: bool) -> None:
    """Refuses to resume ``workdir`` with a config that differs from the one it was started
    with, unless ``config.allow_config_change``; then the change is appended to
    ``config_changes.jsonl``. Writes ``config.json`` (the config in force)."""
    path = os.path.join(workdir, "config.json")
    wanted = json.loads(config.to_json_best_effort(sort_keys=True))
    if resuming and os.path.exists(path):
        saved = read_json(path, CONFIG_REMEDY)
        changes = config_differences(saved, wanted)
        if changes and not config.allow_config_change:
            raise ConfigError(
                f"{workdir} holds a run started with another config; it differs in "
                + "; ".join(changes)
                + ". Resume with the same config, use another --workdir, or pass "
                "--config.allow_config_change=True to continue with the new one (the change "
                "is recorded in config_changes.jsonl)."
            )
        if changes:
            with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
                f.write(json.dumps({"time": time.time(), "changes": changes}) + "\n")
    _write_atomically(path, config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def save_data_info(workdir: str, dataset, norm, source: str = "device", resuming=False) -> None:
    """``data.json``: what evaluating the run needs of its data: class names (label order),
    image shape, the normalisation its steps apply and where its batches came from
    (``input``: "device" or "stream").

    A streamed run also records its data's fingerprint (every file's path, size and time, or
    the TFDS version and split sizes): resuming it on data that changed, or with batches from
    the other source, would read other examples, and is refused."""
    info = {
        "dataset": dataset.name,
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "image_shape": list(dataset.image_shape),
        "norm": {"scale": norm.scale, "mean": list(norm.mean), "std": list(norm.std)},
        "input": source,
    }
    if source == "stream":
        info["fingerprint"] = dataset.fingerprint
    before = load_data_info(workdir) if resuming else None
    if before is not None:
        _check_same_data(workdir, before, info)
    _write_atomically(os.path.join(workdir, "data.json"), json.dumps(info, indent=2) + "\n")


def _check_same_data(workdir: str, before: dict, now: dict) -> None:
    old = before.get("input", "device")  # runs recorded before streaming were on the device
    if old != now["input"]:
        raise ConfigError(
            f"{workdir} was trained with `input={old}` and this run would read its batches "
            f"with `input={now['input']}` (another order and augmentation); resume with "
            f"--config.input={old}, or use another --workdir."
        )
    if before.get("fingerprint", now.get("fingerprint")) != now.get("fingerprint"):
        raise ConfigError(
            f"the data of {workdir} changed since the run started (files added, removed or "
            "rewritten): a resumed stream would read other examples. Restore the data, or "
            "use another --workdir."
        )


def load_data_info(workdir: str) -> dict | None:
    """The run's ``data.json`` (None for runs written before it existed)."""
    path = os.path.join(workdir, "data.json")
    return _read_json(path) if os.path.exists(path) else None


def truncate_history(workdir: str, step: int) -> tuple[int, bool]:
    """Drops ``metrics.jsonl`` rows after ``step``, and a final-results row (it is written
    again when the run finishes). A last line cut short (a crash or a full disk during a
    write) belongs to a step past the last checkpoint and is dropped too; a damaged line
    before it stops with one sentence. Returns (rows dropped, whether a torn line was)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0, False
    lines, rows, torn = read_rows(path)
    kept = [
        line
        for line, row in zip(lines, rows, strict=True)
        if row["step"] <= step and "num_params" not in row
    ]
    if len(kept) != len(lines) or torn:
        _write_atomically(path, "".join(kept))
    return len(lines) - len(kept), torn


def read_rows(path: str) -> tuple[list[str], list[dict], bool]:
    """The complete rows of a JSON-lines file: (lines, rows, whether a torn last line — one
    that does not parse, or has no newline — was left out).

    Raises:
      CheckpointError: a line before the last does not parse (the file is damaged).
    """
    with open(path) as f:
        text = f.read()
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]  # the part after the last newline: "" or a torn row
    lines = [line for line in lines if line.strip()]
    rows, torn = [], False
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise CheckpointError(
                    f"{path} line {number} is damaged ({err.msg}); remove that line to resume."
                ) from None
            torn = True
    if lines and not lines[-1].endswith("\n") and not torn:
        torn = True  # a whole object without its newline: also a write that did not finish
        rows.pop()
    return (lines[:-1] if torn else lines), rows, torn


def save_timing(workdir: str, step: int, timing: dict[str, float]) -> None:
    """Records the run's cumulative seconds at checkpoint ``step``."""
    path = os.path.join(workdir, "timing.json")
    table = _read_json(path)
    table[str(step)] = timing
    _write_atomically(path, json.dumps(table, indent=1, sort_keys=True))


def load_timing(workdir: str, step: int) -> dict[str, float]:
    """The cumulative seconds recorded at checkpoint ``step`` (zeros when there are none)."""
    return _read_json(os.path.join(workdir, "timing.json")).get(
        str(step), {"train_seconds": 0.0, "compile_seconds": 0.0, "eval_seconds": 0.0}
    )


def read_json(path: str, remedy: str) -> dict:
    """The JSON object in ``path`` ({} when there is no file).

    Raises:
      ConfigError: the file does not parse; the message names it and says ``remedy``.
    """
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {err.lineno}: {err.msg}" if hasattr(err, "lineno") else str(err)
        raise ConfigError(f"{path} is not valid JSON ({where}); {remedy}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a {type(value).__name__}, not an object; {remedy}")
    return value


CONFIG_REMEDY = (
    "it records the run's config: restore it (a copy of the config file and flags the run was "
    "started with), or use another --workdir."
)
DATA_REMEDY = "it records the run's classes and normalisation: remove it to write it again."
TIMING_REMEDY = "remove it: the run's recorded times then restart from the next checkpoint."


def _read_json(path: str) -> dict:
    name = os.path.basename(path)
    remedy = {"data.json": DATA_REMEDY, "config.json": CONFIG_REMEDY}.get(name, TIMING_REMEDY)
    return read_json(path, remedy)


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        raise CheckpointError(f"could not write {path}: {err.strerror or err}.") from None
