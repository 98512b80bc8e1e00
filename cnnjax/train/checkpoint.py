"""Orbax checkpoints of the train state: keep the last N and the best; restore safely.

A streamed run's checkpoint holds two items written in one step: ``state`` (the train state)
and ``input`` (the data iterator's state, JSON); a device-resident run's holds the train state
alone, as it always has.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from cnnjax.errors import CheckpointError


def _reason(err: BaseException) -> str:
    """The most specific message in an exception chain (an OSError's strerror if any)."""
    while err is not None:
        if isinstance(err, OSError) and err.strerror:
            return err.strerror.lower()
        if err.__cause__ is None and err.__context__ is None:
            break
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


def _shapes(tree) -> dict[str, tuple]:
    """``{"params/head/kernel": (shape, dtype), ...}`` for a state or a checkpoint's metadata."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
        out["/".join(names)] = (tuple(leaf.shape), str(leaf.dtype))
    return out


def _differences(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
    """What differs between a checkpoint's arrays and the ones the run expects."""
    out = [f"{k} is missing from the checkpoint" for k in wanted if k not in saved]
    out += [f"{k} is in the checkpoint but not in the model" for k in saved if k not in wanted]
    out += [
        f"{k} is {saved[k][0]} {saved[k][1]} in the checkpoint, {wanted[k][0]} {wanted[k][1]} "
        "in the model"
        for k in wanted
        if k in saved and saved[k] != wanted[k]
    ]
    return out


class Checkpoints:
    """The checkpoints of one run in ``directory`` (one sub-folder per step); ``with_input``:
    each also holds the state of the run's input iterator (streamed runs)."""

    def __init__(self, directory: str, keep: int = 3, with_input: bool = False):
        self.directory, self.with_input = os.path.abspath(directory), with_input
        policy = pp.AnyPreservationPolicy(
            [
                pp.LatestN(keep),
                pp.BestN(
                    get_metric_fn=lambda m: m["val_accuracy"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
        handlers = (
            {"state": ocp.StandardCheckpointHandler(), "input": ocp.JsonCheckpointHandler()}
            if with_input
            else ocp.StandardCheckpointHandler()
        )
        self._writing: tuple[int, int | None] | None = None  # (step, last good) in flight
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        metrics: dict[str, float] | None = None,
        input_state: dict | None = None,
        wait: bool = True,
    ) -> None:
        """Saves the state of ``step`` (with ``input_state``, the input iterator's, when the
        checkpoints hold one). The arrays are copied off the devices before this returns, so
        the caller may donate them at once; the files are written in the background unless
        ``wait``, and the next save, :meth:`wait` or :meth:`close` waits for them.

        Raises:
          CheckpointError: this checkpoint, or the one still being written, could not be
            written (a full disk, say); the message names the last good checkpoint, which is
            kept.
        """
        self.wait()
        if step in self.manager.all_steps():
            return
        self._writing = (step, self.latest_step())
        try:
            args = ocp.args.StandardSave(state)
            if self.with_input:
                args = ocp.args.Composite(state=args, input=ocp.args.JsonSave(input_state))
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as err:  # orbax/tensorstore/OS errors: all mean "not written"
            self._failed(err)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Waits for the checkpoint being written, if any.

        Raises:
          CheckpointError: it could not be written; names the last good checkpoint.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # as in save: the background write failed
            self._failed(err)
        self._writing = None

    def _failed(self, err: BaseException):
        step, last = self._writing or (None, self.latest_step())
        self._writing = None
        what = "a checkpoint" if step is None else f"checkpoint {step}"
        raise CheckpointError(
            f"could not write {what} to {self.directory}: {_reason(err)}; the last "
            f"good checkpoint is {last if last is not None else 'none (none was written)'}."
        ) from None

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The state at ``step`` (default: latest), shaped and sharded like ``template``.

        Raises:
          CheckpointError: no such step; a checkpoint of another model or configuration (the
            message lists what differs); or one that fails its integrity check (the message
            says which earlier checkpoint removing it would fall back to).
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}."
            )
        where = f"the checkpoint of step {step} in {self.directory}"
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), template
        )
        try:
            metadata = self.manager.item_metadata(step)
            saved = _shapes(metadata["state"] if self.with_input else metadata)
        except Exception as err:  # unreadable metadata: the checkpoint itself is damaged
            raise CheckpointError(f"{where} is unreadable: {self._corrupt(step, err)}") from None
        differences = _differences(saved, _shapes(abstract))
        if differences:
            raise CheckpointError(
                f"{where} was written by another model or configuration: "
                + "; ".join(differences[:6])
                + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
                + ". Nothing was changed; train this config in another --workdir."
            )
        args = ocp.args.StandardRestore(abstract)
        try:
            if self.with_input:
                return self.manager.restore(step, args=ocp.args.Composite(state=args)).state
            return self.manager.restore(step, args=args)
        except Exception as err:  # orbax/tensorstore raise many types; all mean "unusable"
            raise CheckpointError(f"{where} is corrupt: {self._corrupt(step, err)}") from None

    def restore_input(self, step: int) -> dict:
        """The input iterator's state saved with the checkpoint of ``step``."""
        try:
            args = ocp.args.Composite(input=ocp.args.JsonRestore())
            return self.manager.restore(step, args=args).input
        except Exception as err:  # orbax raises many types; all mean "unusable"
            where = f"the input state of the checkpoint of step {step} in {self.directory}"
            raise CheckpointError(f"{where} is unreadable: {self._corrupt(step, err)}") from None

    def _corrupt(self, step: int, err: BaseException) -> str:
        earlier = [s for s in self.all_steps() if s < step]
        fallback = (
            f"remove {os.path.join(self.directory, str(step))} to resume from step {max(earlier)}"
            if earlier
            else "there is no earlier checkpoint: start again in another --workdir"
        )
        return f"{_reason(err)}. Nothing was changed; {fallback}."

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
