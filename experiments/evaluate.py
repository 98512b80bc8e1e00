"""Evaluate a run's checkpoint on any dataset split.

    python -m experiments.evaluate --workdir=DIR [--dataset=cifar10 --data_dir=...]
        [--split=test] [--step=N] [--tta] [--input=device|stream]

Prints the accuracy and writes ``eval_<dataset>_<split>_<step>.json`` into the workdir.
"""

from __future__ import annotations

import json
import os
import re

from absl import flags

from experiments._cli import fail, quiet_unless_verbose, run_program

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's).")
flags.DEFINE_string("data_dir", None, "Data directory (default: the run's).")
flags.DEFINE_string("split", None, "Split (default: test if present, else validation).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_bool(
    "tta",
    False,
    "Also evaluate with test-time augmentation: the run's `tta` views, or the views its "
    "training made (mirror images only if it flipped, 1-pixel shifts only if it cropped).",
)
flags.DEFINE_enum(
    "input",
    None,
    ["device", "stream"],
    "Decode the split into memory, or stream it batch by batch (default: as the run trained).",
)
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    quiet_unless_verbose()
    from cnnjax.errors import CnnjaxError
    from cnnjax.train import evaluate_checkpoint

    try:
        out = evaluate_checkpoint(
            FLAGS.workdir,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            split=FLAGS.split,
            step=FLAGS.step,
            tta=FLAGS.tta,
            input=FLAGS.input,
        )
    except CnnjaxError as err:  # the user's to fix; anything else is a bug and keeps its trace
        fail(err)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"eval_{out['dataset']}_{out['split']}_{out['step']}")
    path = os.path.join(FLAGS.workdir, name + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    tta = f", with TTA ({out['tta']}) {out['tta_accuracy']:.4f}" if "tta" in out else ""
    print(
        f"{out['dataset']}/{out['split']} at step {out['step']}: accuracy {out['accuracy']:.4f}"
        f"{tta} (loss {out['loss']:.4f}, {out['examples']} examples) -> {path}"
    )


def run():
    """The ``cnnjax-evaluate`` command."""
    run_program(main, __doc__)


if __name__ == "__main__":
    run()
