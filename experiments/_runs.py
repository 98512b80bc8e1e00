"""Run management shared by the programs that train many runs (studies, ablations)."""

from __future__ import annotations

import json
import os
import time

import numpy as np


def same_config(workdir: str, train) -> bool:
    """Whether ``workdir`` holds a run of ``train`` (operational fields such as ``progress``
    aside: :data:`cnnjax.train.workdir.OPERATIONAL`)."""
    from cnnjax.train.workdir import config_differences

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    return not config_differences(saved, json.loads(train.to_json_best_effort()))


def prepare_workdir(workdir: str, train) -> None:
    """A run whose config changed since it was started is set aside (renamed, not deleted)
    and trained again; a run of the same config is reused or resumed."""
    if os.path.exists(os.path.join(workdir, "config.json")) and not same_config(workdir, train):
        stale = f"{workdir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(workdir, stale)
        print(f"== {workdir}: its config changed since it ran; moved to {stale}", flush=True)


def subset(split, n: int, seed: int = 0):
    """(images, labels) of ``n`` images of ``split`` drawn without replacement with a fixed
    seed. Not the first ``n``: an image folder's held-out split is stored class by class, so
    its first 2,000 CIFAR-10 images hold four classes."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:n])
    return split.images[picked], split.labels[picked]
