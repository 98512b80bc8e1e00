"""Reference: PyTorch eager training step of torchvision's ResNet-50 / GoogLeNet on this CPU.

The yardstick for ``python -m experiments.bench_train --model=resnet50 --image_size=224
--batch=32``: the same network, batch, precision and optimiser (SGD, Nesterov momentum 0.9,
weight decay 1e-4, cross-entropy), channels-last, random images. Run the two interleaved in
one sitting (machines are noisy; compare the ratio). PyTorch is not a dependency of cnnjax;
use a separate environment:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 torchvision
    .venv-torch/bin/python experiments/torch_imagenet_reference.py --model=resnet50

Prints one line: ``torch_imagenet model=... batch=... ms_per_step=... img_per_s=...``.
"""

import argparse
import statistics
import time

import torch


def _torchvision_models():
    """torchvision's model definitions. Its compiled operators (detection ops such as nms) are
    not needed; where the wheel's extension does not match the installed torch, declaring the
    two operators its meta registrations expect lets the package import."""
    try:
        import torchvision
    except RuntimeError:
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision.models


def build(name: str) -> torch.nn.Module:
    models = _torchvision_models()
    if name == "googlenet":  # both auxiliary heads on, as cnnjax's googlenet trains
        return models.googlenet(aux_logits=True, init_weights=True)
    return getattr(models, name)()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.model).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    x = torch.randn(args.batch, 3, args.image_size, args.image_size).to(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 1000, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if isinstance(out, tuple):  # GoogLeNet in training: (logits, aux2, aux1)
            loss = loss_fn(out[0], y) + 0.3 * (loss_fn(out[1], y) + loss_fn(out[2], y))
        else:
            loss = loss_fn(out, y)
        loss.backward()
        opt.step()

    step()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    print(
        f"torch_imagenet model={args.model} batch={args.batch} image_size={args.image_size} "
        f"threads={torch.get_num_threads()} ms_per_step={ms:.1f} "
        f"img_per_s={args.batch / ms * 1e3:.1f}"
    )


if __name__ == "__main__":
    main()
