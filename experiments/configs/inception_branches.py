"""Which Inception branch the next layer trusts (``python -m experiments.inception_branches``).

    python -m experiments.inception_branches --config=inception_branches:quick
    python -m experiments.inception_branches --config=inception_branches:cpu
    python -m experiments.inception_branches --workdir=runs/my_googlenet   # any trained run

Trains ``googlenet_small`` (the model built from ``cnnjax.nn.Inception``'s four-branch modules)
unless ``--workdir`` names a finished run, then measures every module's branches on up to
``eval_images`` held-out images.

Fields: ``train`` (the training config), ``eval_images``, ``branches`` (which of 1x1, 3x3,
5x5, pool to measure, comma-separated; all four by default), ``out_dir``.

Variants:
  quick  digits at 16x16, width 0.25, 6 epochs: a minute on 2 CPU cores.
  cpu    the CIFAR-10 image folder (validation held out), width 0.5, 4 epochs of AdamW: about
         half an hour on 2 CPU cores.
"""

import ml_collections

from cnnjax.train import default_config


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.eval_images = 2000
    c.branches = "1x1,3x3,5x5,pool"
    t = default_config()
    t.model = "googlenet_small"
    t.batch_size = 128
    t.optimizer = "adamw"
    t.learning_rate = 2e-3
    t.weight_decay = 5e-4
    t.schedule = "cosine"
    t.warmup_epochs = 0.5
    t.num_epochs = 6.0
    t.log_every_steps = 100
    t.keep_checkpoints = 1
    c.train = t
    arg = arg or "quick"
    if arg == "quick":
        t.dataset = "digits"
        t.image_size = 16
        t.width = 0.25
        t.flip = False
        t.crop_padding = 2
        t.batch_size = 64
    elif arg == "cpu":
        t.dataset = "imagefolder"
        t.data_dir = ".cache/cifar10-jpeg"
        t.width = 0.5
        t.num_epochs = 4.0
    else:
        raise ValueError(f"unknown config {arg!r}; use 'quick' or 'cpu'.")
    c.out_dir = f"results/inception_branches_{arg}"
    return c
