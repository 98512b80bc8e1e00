"""The fast network's pooling-versus-stride study (``python -m experiments.fast_study``).

    python -m experiments.fast_study --config=experiments/configs/fast_study.py
    python -m experiments.fast_study --config=experiments/configs/fast_study.py:gpu
    python -m experiments.fast_study --config=experiments/configs/fast_study.py:quick

Fields as in ``pool_vs_stride.py`` (``variants``, ``variant_field``, ``seeds``,
``learning_rates``, ``out_dir``, ``train``); the variants are ``downsample`` settings of
``airbench94``.

Variants:
  (none)  airbench94 on the CIFAR-10 image folder with each downsampling (pool, avgpool,
          stride, extra_stride, blurpool) x 3 seeds, 4 epochs of the fast recipe: under three
          hours on 2 CPU cores.
  gpu     the same with the full recipe (9.9 epochs, bfloat16) and 10 seeds, for an
          accelerator: 6.8 minutes on one H100 as five processes, one per variant
          (--config.variants=pool, ...), then once with all five to write the table.
  quick   the study on digits in minutes (2 seeds), for tests.
"""

import ml_collections

from experiments.configs import airbench

VARIANTS = "pool,avgpool,stride,extra_stride,blurpool"


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ("", "gpu", "quick"):
        raise ValueError(f"unknown study {arg!r}; use '' (the CPU study), 'gpu' or 'quick'.")
    c = ml_collections.ConfigDict()
    c.variants = VARIANTS
    c.variant_field = "downsample"  # the train config field each variant sets
    c.learning_rates = ""  # the recipe's own rate
    c.train = airbench.get_config(arg or None)
    # The directories the study used when it was a variant of pool_vs_stride, so that its
    # finished runs are found again.
    c.out_dir = f"results/pool_vs_stride_fast{'_' + arg if arg else ''}"
    if arg == "":
        # A shortened schedule (4 of 9.9 epochs) keeps 5 variants x 3 seeds within three
        # hours on 2 CPU cores (4.5 epochs took 3.2); the README measures what it costs
        # against the full recipe.
        c.seeds = 3
        c.train.num_epochs = 4.0
        c.train.warmup_epochs = 0.23 * 4.0
    else:
        c.seeds = 10 if arg == "gpu" else 2
    return c
