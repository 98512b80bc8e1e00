"""The model zoo: ``get_model(name, **overrides)`` returns a Flax module.

Every model except ``sharing_local`` and ``sharing_dense`` (see :func:`accepts_any_size`)
takes NHWC images of any size above its minimum and is called as
``model.apply(variables, x, train=False, return_features=False)``; with
``return_features=True`` it returns ``(logits, features)``, a dict of named intermediate
activations in computation order. Overrides are the module's attributes: ``width``,
``num_classes``, ``dropout``, ``batch_norm``, ``downsample="pool"|"stride"``,
``backend`` (the convolution backend), ``activation`` (All-CNN family), ``dtype``,
``param_dtype`` and per-family ones (``aux_logits`` for ``googlenet``, ``zero_init_residual``
for the ResNets, whose ``downsample`` also takes "standard" and "blurpool").
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import airbench, googlenet, resnet
from cnnjax.models._common import ACTIVATIONS, DOWNSAMPLE
from cnnjax.models.airbench import AirBench94
from cnnjax.models.allcnn import AllCNN
from cnnjax.models.googlenet import GoogLeNet
from cnnjax.models.inception import GoogLeNetSmall, InceptionSite, Reader, SmallInception
from cnnjax.models.nin import NiN
from cnnjax.models.resnet import ResNet, ResNetBlock
from cnnjax.models.sharing import LAYERS, SharingNet

_VARIANTS = {  # All-CNN paper name -> (extra 3x3 conv per block, downsampling)
    "model": (False, "pool"),
    "strided_cnn": (False, "stride"),
    "convpool_cnn": (True, "pool"),
    "all_cnn": (True, "stride"),
}

_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    f"{variant}_{base}": (AllCNN, dict(base=base, extra_conv=extra, downsample=down))
    for base in "abc"
    for variant, (extra, down) in _VARIANTS.items()
}
_REGISTRY.update(
    airbench94=(AirBench94, {}),
    nin=(NiN, {}),
    small_inception=(SmallInception, {}),
    googlenet_small=(GoogLeNetSmall, {}),
    googlenet=(GoogLeNet, {}),
    **{f"resnet{depth}": (ResNet, dict(depth=depth)) for depth in (18, 34, 50)},
    **{f"sharing_{layer}": (SharingNet, dict(layer=layer)) for layer in LAYERS},
    sharing_conv_wide=(SharingNet, dict(layer="conv", channels=116)),
)


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return sorted(_REGISTRY)


def accepts_any_size(name: str) -> bool:
    """Whether the model's weights fit every input size (False for per-position weights)."""
    cls, defaults = _lookup(name)
    return not (cls is SharingNet and defaults["layer"] != "conv")


def model_fields(name: str) -> list[str]:
    """The overrides a model accepts."""
    cls, _ = _lookup(name)
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def downsample_choices(name: str) -> tuple[str, ...]:
    """The values the model's ``downsample`` takes (empty for a model without the setting)."""
    cls, _ = _lookup(name)
    if "downsample" not in model_fields(name):
        return ()
    families = {AirBench94: airbench, GoogLeNet: googlenet, ResNet: resnet}
    return families[cls].DOWNSAMPLE if cls in families else DOWNSAMPLE


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}.")
    return _REGISTRY[name]


def get_model(name: str, **overrides: Any) -> nn.Module:
    """The registered model ``name`` with attribute ``overrides`` (e.g. ``width=0.5``)."""
    if "conv_backend" in overrides:
        warnings.warn(
            "`conv_backend` is now spelled `backend`, as in cnnjax.ops.conv2d.",
            DeprecationWarning,
            stacklevel=2,
        )
        overrides["backend"] = overrides.pop("conv_backend")
    cls, defaults = _lookup(name)
    valid = model_fields(name)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for model {name!r}; valid: {', '.join(valid)}."
        )
    return cls(**{**defaults, **overrides})


def inception_sites(model: nn.Module) -> tuple[InceptionSite, ...]:
    """The Inception modules of ``model`` in order, each with its branch widths and the
    layers that read its output (:class:`InceptionSite`): what an analysis of the branches
    needs without knowing the network's layer names.

    Raises:
      ValueError: ``model`` does not describe its Inception modules (only ``googlenet_small``
        does today).
    """
    sites = getattr(model, "inception_sites", None)
    if sites is None:
        raise ValueError(
            f"`model` ({type(model).__name__}) does not list its Inception modules; "
            "googlenet_small does (GoogLeNetSmall.inception_sites)."
        )
    return sites()


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree (weights and biases, BatchNorm scale/shift)."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def count_flops(model: nn.Module, image_shape=(32, 32, 3)) -> float:
    """Forward-pass FLOPs for one image (XLA's cost analysis; a multiply-add counts as 2)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    # Counted on the CPU backend wherever the run is: a GPU's compiled program calls its
    # convolutions as library kernels, which XLA's cost analysis leaves out (5.5 of airbench94's
    # 208 MFLOPs on an H100 with jax 0.11).
    try:
        device = jax.devices("cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without the CPU: the default backend's count
        device = jax.devices()[0]
    with jax.default_device(device):
        lowered = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x)
        cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"]) if cost and "flops" in cost else float("nan")


__all__ = [
    "ACTIVATIONS",
    "AirBench94",
    "AllCNN",
    "GoogLeNet",
    "GoogLeNetSmall",
    "InceptionSite",
    "NiN",
    "Reader",
    "ResNet",
    "ResNetBlock",
    "SharingNet",
    "SmallInception",
    "accepts_any_size",
    "count_flops",
    "count_params",
    "downsample_choices",
    "get_model",
    "inception_sites",
    "list_models",
    "model_fields",
]
