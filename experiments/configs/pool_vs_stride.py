"""The pooling-versus-strided-convolution study (Springenberg et al. 2015, Table 3).

    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:quick
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:cpu
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:paper \
        --config.train.dataset=cifar10

Fields: ``variants`` (registry names), ``seeds`` (how many), ``learning_rates`` (a grid; the
best mean validation accuracy picks each variant's rate, as in the paper; empty: the train
config's rate), ``out_dir``, and ``train``, a full training config
(``--config.train.num_epochs=20``).

Variants:
  quick  the four model-C variants on digits, 2 seeds, ~2 minutes on 2 CPU cores.
  cpu    model_c against all_cnn_c at width 0.25 on CIFAR-10 from the image folder in
         .cache/cifar10-jpeg (held-out validation split), 2 seeds, BatchNorm + AdamW with a
         cosine schedule for 4 epochs: about an hour on 2 CPU cores (add
         --config.variants=model_c,strided_cnn_c,convpool_cnn_c,all_cnn_c for all four,
         about two and a half hours).
  paper  the paper's recipe (350 epochs, SGD, lr grid 0.25/0.1/0.05/0.01, GCN + ZCA, no
         BatchNorm) for the twelve variants of models A, B and C. Meant for accelerators.
  imagenet     ResNet-18's downsampling (standard: the stem pools and the stages stride;
               pool; stride; blurpool) on the ImageNet recipe's :quick folder (write it first
               with ``python -m experiments.make_image_folder``), 2 seeds, top-1 and top-5:
               about 6 minutes on 2 CPU cores.
  imagenet_gpu the same question at scale: ResNet-50 on ImageNet with flax's recipe
               (``imagenet.py:gpu``, bfloat16), one seed per variant; set
               ``--config.train.data_dir`` to the prepared TFDS data.

The fast network's study is its own program and config: ``experiments/configs/fast_study.py``.
"""

import ml_collections

from experiments.configs import allcnn, imagenet

C_VARIANTS = "model_c,strided_cnn_c,convpool_cnn_c,all_cnn_c"
IMAGENET_VARIANTS = "standard,pool,stride,blurpool"


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.variants = C_VARIANTS
    c.variant_field = "model"  # the train config field each variant sets
    c.seeds = 2
    c.learning_rates = ""
    c.out_dir = "results/pool_vs_stride"
    arg = arg or "quick"
    if arg == "quick":
        c.train = allcnn.get_config("quick")
        c.out_dir = "results/pool_vs_stride_quick"
    elif arg == "cpu":
        c.train = allcnn.get_config("cpu")
        c.variants = "model_c,all_cnn_c"
        c.train.width = 0.25
        c.train.num_epochs = 4
        c.train.batch_norm = True
        c.train.dropout = 0.0
        c.train.optimizer = "adamw"
        c.train.learning_rate = 3e-3
        c.train.weight_decay = 5e-4
        c.train.warmup_epochs = 0.5
        c.train.log_every_steps = 100
        c.out_dir = "results/pool_vs_stride_cpu"
    elif arg == "paper":
        c.train = allcnn.get_config("paper")
        c.variants = ",".join(
            f"{v}_{b}" for b in "abc" for v in ("model", "strided_cnn", "convpool_cnn", "all_cnn")
        )
        c.learning_rates = "0.25,0.1,0.05,0.01"
        c.seeds = 1
        c.out_dir = "results/pool_vs_stride_paper"
    elif arg in ("imagenet", "imagenet_gpu"):
        c.variant_field = "downsample"
        c.variants = IMAGENET_VARIANTS
        c.train = imagenet.get_config("quick" if arg == "imagenet" else "gpu")
        c.seeds = 2 if arg == "imagenet" else 1
        c.out_dir = f"results/pool_vs_stride_{arg}"
    elif arg.startswith("fast"):
        raise ValueError(
            f"the fast-network study is its own program now: python -m experiments.fast_study "
            f"--config=experiments/configs/fast_study.py:{arg[5:]} (same runs, same out_dir)."
        )
    else:
        raise ValueError(
            f"unknown study {arg!r}; use 'quick', 'cpu', 'paper', 'imagenet' or 'imagenet_gpu'."
        )
    return c
