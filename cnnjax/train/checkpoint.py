"""Orbax checkpoints of the train state: keep the last N and the best; restore safely."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from cnnjax.errors import CheckpointError


class Checkpoints:
    """The checkpoints of one run in ``directory`` (one sub-folder per step)."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Saves asynchronously; :meth:`wait` before relying on the files."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The state at ``step`` (default: latest), shaped and sharded like ``template``.

        Raises:
          CheckpointError: no such step, a different model/config, or a corrupt checkpoint.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}."
            )
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), template
        )
        hint = (
            f"Nothing was changed. The checkpoint was written by a different model or "
            f"configuration, or it is corrupt: start a new run in another --workdir, or "
            f"remove {os.path.join(self.directory, str(step))} to fall back to an earlier one."
        )
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax/tensorstore raise many types; all mean "unusable"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"cannot restore the checkpoint of step {step} in {self.directory} "
                f"({type(err).__name__}: {first[:300]}). {hint}"
            ) from None
        want = jax.tree.map(lambda a: (a.shape, a.dtype), abstract)
        got = jax.tree.map(lambda a: (a.shape, a.dtype), restored)
        if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
            raise CheckpointError(
                f"the checkpoint of step {step} in {self.directory} does not match the "
                f"model's parameter shapes. {hint}"
            )
        return restored

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
