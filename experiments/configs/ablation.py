"""The fast recipe with each of its pieces removed in turn (``python -m experiments.ablation``).

    python -m experiments.ablation --config=experiments/configs/ablation.py:cpu
    python -m experiments.ablation --config=experiments/configs/ablation.py:quick

Fields: ``train`` (the full recipe), ``ablations`` (comma-separated names from
:data:`ABLATIONS`), ``seeds``, ``out_dir``.

Variants:
  cpu    airbench94 on the CIFAR-10 image folder at the fast study's budget (4.5 of 9.9
         epochs), one seed per row: about 80 minutes on 2 CPU cores.
  gpu    the full recipe (9.9 epochs), 5 seeds per row, for an accelerator.
  quick  on digits, for tests.
"""

import ml_collections

from experiments.configs import airbench

# name: (what the row removes, the config fields that remove it)
ABLATIONS = {
    "full": ("the full recipe", {}),
    "no_whitening": (
        "no patch whitening (first layer trained from random)",
        dict(patch_whitening=False, frozen="", train_epochs=""),
    ),
    "no_lookahead": ("no lookahead", dict(lookahead_every=0)),
    "no_smoothing": ("no label smoothing", dict(label_smoothing=0.0)),
    "random_flips": ("random flips, not alternating", dict(flip_mode="random")),
    "no_translation": ("no translation", dict(crop_padding=0)),
    "bn_bias_1x": ("BatchNorm biases at 1x, not 64x", dict(lr_multipliers="")),
}


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.ablations = ",".join(ABLATIONS)
    c.seeds = 1
    arg = arg or "cpu"
    if arg == "cpu":
        c.train = airbench.get_config()
        c.train.num_epochs = 4.5
        c.train.warmup_epochs = 0.23 * 4.5
    elif arg == "gpu":
        c.train = airbench.get_config("gpu")
        c.seeds = 5
    elif arg == "quick":
        c.train = airbench.get_config("quick")
        c.ablations = "full,no_lookahead,no_translation"
    else:
        raise ValueError(f"unknown ablation config {arg!r}; use 'cpu', 'gpu' or 'quick'.")
    c.out_dir = f"results/ablation_{arg}"
    return c
