"""ImageNet-scale training: flax's ImageNet example recipe for ResNet-50, and GoogLeNet.

    python -m experiments.make_image_folder        # once: .cache/imagenet-quick (offline)
    python -m experiments.train --config=experiments/configs/imagenet.py:quick --workdir=runs/in
    python -m experiments.train --config=experiments/configs/imagenet.py:gpu \
        --config.data_dir=$TFDS_DATA_DIR --workdir=runs/resnet50
    python -m experiments.train --config=experiments/configs/imagenet.py:googlenet_gpu \
        --config.data_dir=$TFDS_DATA_DIR --workdir=runs/googlenet

Variants (the argument after the colon):
  (none)         ResNet-50 on TFDS ``imagenet2012`` (prepared beforehand: TFDS needs the
                 manual download), flax's recipe: global batch 1,024, SGD with Nesterov
                 momentum 0.9, learning rate 0.1 × 1,024/256 = 0.4 with a 5-epoch linear
                 warm-up then cosine decay, weight decay 1e-4 on kernels only (not BatchNorm,
                 not biases), 100 epochs; Inception-style random-resized crops and flips at
                 224 px, evaluation on the centre crop of the image resized to 256. Streams
                 (``input="stream"``): the host decodes and crops, each process its share.
                 float32 (for the CPU); ``label_smoothing`` is a field (0 as in flax's example,
                 0.1 in FFCV's).
  gpu            the same with bfloat16 computation (float32 parameters): the real run.
  googlenet      GoogLeNet (Table 1) with BatchNorm and both auxiliary classifiers (weight 0.3)
                 on the same recipe; ``googlenet_gpu`` in bfloat16.
  quick          the path end to end on the CPU in about a minute: ResNet-18 at 64 px on the
                 small ImageNet-shaped folder ``make_image_folder`` writes (digits at many
                 sizes), streamed, 2 epochs, top-1 and top-5 accuracy. Any network:
                 ``--config.model=resnet50``, or ``--config.model=googlenet
                 --config.batch_norm=true --config.image_size=96`` (its auxiliary heads need
                 65 px; without BatchNorm it barely moves in 40 steps, as in the paper's
                 setting it needs a long schedule).

If you scale the batch, scale the rate with it (0.1 per 256 examples):
``--config.batch_size=256 --config.learning_rate=0.1``.
"""

from cnnjax.train import default_config

VARIANTS = ("", "gpu", "googlenet", "googlenet_gpu", "quick")


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"unknown config argument {arg!r}; use one of {VARIANTS}.")
    c = default_config()
    c.model = "resnet50"
    c.dataset = "imagenet2012"
    c.input = "stream"
    c.augment = "inception"
    c.image_size = 224
    c.flip = True
    c.crop_padding = 0  # the random-resized crop replaces the pad-and-crop of small images
    c.val_fraction = 0.0  # ImageNet's validation split is the held-out data
    c.batch_size = 1024
    c.eval_batch_size = 1024
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = True
    c.learning_rate = 0.1 * c.batch_size / 256
    c.weight_decay = 1e-4
    c.weight_decay_on = "kernels"
    c.schedule = "cosine"
    c.warmup_epochs = 5.0
    c.label_smoothing = 0.0
    c.log_every_steps = 100
    c.checkpoint_every_epochs = 1
    if arg.startswith("googlenet"):
        c.model = "googlenet"
        c.batch_norm = True
        c.aux_logits = True
    if arg.endswith("gpu"):
        c.compute_dtype = "bfloat16"
    if arg == "quick":
        c.model = "resnet18"
        c.dataset = "imagefolder"
        c.data_dir = ".cache/imagenet-quick"
        c.image_size = 64
        c.batch_size = 64
        c.eval_batch_size = 256
        c.learning_rate = 0.1 * c.batch_size / 256
        c.num_epochs = 2
        c.warmup_epochs = 0.5
        c.log_every_steps = 5
    return c
