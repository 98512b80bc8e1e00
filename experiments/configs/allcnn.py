"""All-CNN family training config (Springenberg et al., 2015).

    python -m experiments.train --config=experiments/configs/allcnn.py --workdir=runs/allcnn
    python -m experiments.train --config=experiments/configs/allcnn.py:quick --workdir=runs/q
    python -m experiments.train --config=experiments/configs/allcnn.py:cpu \
        --config.data_dir=.cache/cifar10-jpeg/train/.. --workdir=runs/cpu
    python -m experiments.train --config=experiments/configs/allcnn.py:paper \
        --config.dataset=cifar10 --workdir=runs/paper

Variants (the argument after the colon):
  (none)  all_cnn_c on CIFAR-10 from TFDS, a shorter schedule than the paper's.
  quick   digits (bundled with scikit-learn) at 16x16, width 0.25, BatchNorm, AdamW:
          about 15 seconds on 2 CPU cores, ~95% test accuracy.
  cpu     CIFAR-10 from an image folder, width 0.5, a budget for 2 CPU cores.
  paper   the paper's recipe: 350 epochs, SGD momentum 0.9, lr ×0.1 at epochs 200, 250, 300,
          weight decay 1e-3, dropout, GCN + ZCA whitening. Meant for accelerators.

Pick the model with ``--config.model=model_c`` (any name from ``cnnjax.models.list_models()``).
"""

from cnnjax.train import default_config


def get_config(arg: str | None = None):
    c = default_config()
    c.model = "all_cnn_c"
    c.dataset = "cifar10"
    c.batch_size = 128
    c.num_epochs = 60
    c.optimizer = "sgd"
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.weight_decay = 1e-3
    c.schedule = "piecewise"
    c.decay_epochs = (30, 45, 55)
    if arg in (None, ""):
        return c
    if arg == "quick":
        c.dataset = "digits"
        c.image_size = 16
        c.flip = False
        c.crop_padding = 2
        c.width = 0.25
        # BatchNorm makes the small, short run robust to the learning rate (without it the
        # paper's ReLU on the class maps can die at the start and never recover).
        c.batch_norm = True
        c.dropout = 0.0
        c.batch_size = 64
        c.num_epochs = 10
        c.optimizer = "adamw"
        c.learning_rate = 3e-3
        c.weight_decay = 1e-4
        c.schedule = "cosine"
        c.warmup_epochs = 1.0
        c.log_every_steps = 10
        return c
    if arg == "cpu":
        c.dataset = "imagefolder"
        c.data_dir = ".cache/cifar10-jpeg"
        c.width = 0.5
        c.num_epochs = 10
        c.schedule = "cosine"
        c.warmup_epochs = 1.0
        return c
    if arg == "paper":
        c.num_epochs = 350
        c.decay_epochs = (200, 250, 300)
        c.learning_rate = 0.05
        c.preprocess = "gcn_zca"
        c.crop_padding = 0  # the paper's headline numbers use no augmentation
        c.flip = False
        return c
    raise ValueError(f"unknown config argument {arg!r}; use one of '', 'quick', 'cpu', 'paper'.")
