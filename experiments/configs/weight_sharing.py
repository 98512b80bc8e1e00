"""Local connectivity and weight sharing, measured apart (``python -m experiments.weight_sharing``).

    python -m experiments.weight_sharing --config=experiments/configs/weight_sharing.py:quick
    python -m experiments.weight_sharing --config=experiments/configs/weight_sharing.py:cpu

The same three-layer network (``cnnjax.models.SharingNet``) with convolutional, locally
connected and fully connected hidden layers, and convolutional at the locally connected
network's parameter count (``sharing_conv_wide``), trained with one recipe on a fraction of the
training split, for several seeds; evaluated on the held-out split and on it shifted by 0-4 px.

Fields: ``variants`` (registry names), ``fractions`` (of the training split), ``seeds``,
``shifts`` (pixels), ``out_dir`` and ``train`` (the training config every run shares).

Variants:
  quick  digits at 16x16, 2 seeds, fractions 0.3 and 1: a few minutes on 2 CPU cores.
  cpu    the CIFAR-10 image folder downsampled to 16x16 (validation held out), 3 seeds,
         fractions 0.1, 0.3 and 1, 15 epochs of AdamW: 36 runs, 25 minutes of training on
         2 CPU cores.
"""

import ml_collections

from cnnjax.train import default_config


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.variants = "sharing_conv,sharing_local,sharing_dense,sharing_conv_wide"
    c.fractions = "0.1,0.3,1.0"
    c.seeds = 3
    c.shifts = "0,1,2,3,4"
    t = default_config()
    t.image_size = 16
    t.batch_size = 128
    t.num_epochs = 10.0
    t.optimizer = "adamw"
    t.learning_rate = 1e-3
    t.weight_decay = 1e-4
    t.schedule = "cosine"
    t.warmup_epochs = 0.5
    t.crop_padding = 0  # no augmentation: the layers' own invariances are what is measured
    t.flip = False
    t.log_every_steps = 100
    t.keep_checkpoints = 1
    c.train = t
    arg = arg or "quick"
    if arg == "quick":
        t.dataset = "digits"
        t.num_epochs = 15.0
        t.batch_size = 64
        c.fractions = "0.3,1.0"
        c.seeds = 2
    elif arg == "cpu":
        t.dataset = "imagefolder"
        t.data_dir = ".cache/cifar10-jpeg"
        t.num_epochs = 15.0
    else:
        raise ValueError(f"unknown weight-sharing config {arg!r}; use 'quick' or 'cpu'.")
    c.out_dir = f"results/weight_sharing_{arg}"
    return c
