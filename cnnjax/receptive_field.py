"""Receptive fields of any JAX function or Flax model, by walking its jaxpr.

For every spatial axis a unit at output index ``i`` sees the input pixels

    [i · stride − padding,  i · stride − padding + size − 1]

(``size``, effective ``stride`` and effective ``padding``: the quantities of
google-research/receptive_field). Coordinates may fall outside the image, in the padding.

Each layer updates them exactly: a window of ``k`` taps with dilation ``d``, stride ``s`` and
low padding ``lo`` turns (size r, stride j, padding p) into
``(r + ((k − 1)·d)·j,  j·s,  p + lo·j)``. Element-wise operations keep them, slices shift
them, and branches that are joined (concatenated along channels, as in Inception, or added)
take their union when their strides agree. Reductions over spatial axes (global pooling)
make a unit see its whole input.

``receptive_field`` traces the function with :func:`jax.make_jaxpr` (no FLOPs are spent) and
follows the primitives; anything it cannot analyse raises :class:`ReceptiveFieldError` naming
the primitive. Analyse models in inference mode: training-mode BatchNorm couples all pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ReceptiveFieldError(ValueError):
    """A graph the analysis cannot follow (misaligned branches, unsupported primitives)."""


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field per spatial axis.

    Attributes:
      size: pixels seen along each axis (the bounding box, holes of dilation included).
      stride: effective stride, input pixels between neighbouring units.
      padding: effective padding, how far the first unit's field starts before pixel 0.
      is_global: True when the output was reduced over space (global pooling): then ``size``
        spans the union of all units' fields and ``stride`` is 0.
    """

    size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    is_global: bool = False

    def input_range(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Inclusive input-pixel range (start, end) per axis seen by the unit at ``index``."""
        return tuple(
            (i * j - p, i * j - p + r - 1)
            for i, j, p, r in zip(index, self.stride, self.padding, self.size, strict=True)
        )

    def center(self, index: Sequence[int]) -> tuple[float, ...]:
        """Centre of the field of the unit at ``index`` in input coordinates."""
        return tuple((a + b) / 2 for a, b in self.input_range(index))


class _Axis(NamedTuple):
    var_axis: int | None  # where this input axis lives in the variable; None once reduced
    size: int
    stride: int
    padding: int


_ELEMENTWISE = {
    "abs",
    "add",
    "add_any",
    "and",
    "atan2",
    "cbrt",
    "ceil",
    "clamp",
    "convert_element_type",
    "copy",
    "copy_p",
    "cos",
    "div",
    "eq",
    "erf",
    "erfc",
    "erf_inv",
    "exp",
    "exp2",
    "expm1",
    "floor",
    "ge",
    "gt",
    "integer_pow",
    "is_finite",
    "le",
    "log",
    "log1p",
    "logistic",
    "lt",
    "max",
    "min",
    "mul",
    "ne",
    "neg",
    "not",
    "or",
    "pow",
    "reduce_precision",
    "round",
    "rsqrt",
    "select_n",
    "sign",
    "sin",
    "sqrt",
    "square",
    "stop_gradient",
    "sub",
    "tan",
    "tanh",
    "xor",
    "optimization_barrier",
}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_WINDOWED = {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"}
_SUBJAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")

Info = dict[int, _Axis]


def _union(infos: list[Info], prim: str) -> Info:
    """Joins branches: same mapping of axes, same strides; the field is the hull of the fields."""
    infos = [i for i in infos if i]
    if not infos:
        return {}
    out = dict(infos[0])
    for info in infos[1:]:
        if info.keys() != out.keys():
            raise ReceptiveFieldError(f"`{prim}` joins operands with different spatial axes.")
        for a, b in info.items():
            c = out[a]
            if b.var_axis != c.var_axis:
                raise ReceptiveFieldError(
                    f"`{prim}` joins misaligned branches: spatial axis {a} is at position "
                    f"{c.var_axis} in one operand and {b.var_axis} in another."
                )
            if b.stride != c.stride:
                raise ReceptiveFieldError(
                    f"`{prim}` joins misaligned branches: effective strides {c.stride} and "
                    f"{b.stride} along spatial axis {a}."
                )
            pad = max(b.padding, c.padding)
            size = max(b.size - b.padding, c.size - c.padding) + pad
            out[a] = _Axis(c.var_axis, size, c.stride, pad)
    return out


def _windowed(info: Info, window, strides, pads, dilation) -> Info:
    out = {}
    for a, ax in info.items():
        if ax.var_axis is None:
            out[a] = ax
            continue
        i = ax.var_axis
        out[a] = _Axis(
            i,
            ax.size + (window[i] - 1) * dilation[i] * ax.stride,
            ax.stride * strides[i],
            ax.padding + pads[i][0] * ax.stride,
        )
    return out


def _relabel(info: Info, shape, mapping: dict[int, int | None]) -> Info:
    """Moves spatial axes to new positions; an axis mapped to None was reduced over (global
    pooling, a Flatten before a Dense layer), so its units now see everything along it."""
    out = {}
    for a, ax in info.items():
        if ax.var_axis is None:
            out[a] = ax
        elif mapping.get(ax.var_axis) is None:
            n = shape[ax.var_axis]
            out[a] = _Axis(None, (n - 1) * ax.stride + ax.size, 0, ax.padding)
        else:
            out[a] = ax._replace(var_axis=mapping[ax.var_axis])
    return out


def _reduce(info: Info, axes, shape) -> Info:
    kept = [d for d in range(len(shape)) if d not in set(axes)]
    return _relabel(info, shape, {d: i for i, d in enumerate(kept)})


def _conv(eqn, lhs: Info, rhs: Info) -> Info:
    if rhs:
        raise ReceptiveFieldError("`conv_general_dilated` with a kernel computed from the input.")
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]):
        raise ReceptiveFieldError(
            "`conv_general_dilated` with lhs_dilation (a transposed convolution) is not supported."
        )
    dn = p["dimension_numbers"]
    lhs_spatial, rhs_spatial, out_spatial = dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:]
    kshape = eqn.invars[1].aval.shape
    nd = len(lhs_spatial)
    window = {ax: kshape[r] for ax, r in zip(lhs_spatial, rhs_spatial, strict=True)}
    position = dict(zip(lhs_spatial, range(nd), strict=True))
    out = {}
    for a, ax in lhs.items():
        if ax.var_axis is None:
            out[a] = ax
            continue
        if ax.var_axis not in position:
            raise ReceptiveFieldError("`conv_general_dilated` contracts over a spatial axis.")
        i = position[ax.var_axis]
        k, s, d = window[ax.var_axis], p["window_strides"][i], p["rhs_dilation"][i]
        lo = p["padding"][i][0]
        out[a] = _Axis(
            out_spatial[i],
            ax.size + (k - 1) * d * ax.stride,
            ax.stride * s,
            ax.padding + lo * ax.stride,
        )
    return out


def _dot_general(eqn, lhs: Info, rhs: Info) -> Info:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    joined, offset = [], len(lb)
    for info, var, contract, batch in ((lhs, eqn.invars[0], lc, lb), (rhs, eqn.invars[1], rc, rb)):
        shape = var.aval.shape
        free = [d for d in range(len(shape)) if d not in contract and d not in batch]
        mapping = {d: i for i, d in enumerate(batch)} | {d: offset + i for i, d in enumerate(free)}
        offset += len(free)
        joined.append(_relabel(info, shape, mapping))
    return _union(joined, "dot_general")


# One rule per primitive: (eqn, infos of its inputs, shape of its first input) -> the info of
# its single output. Primitives with several outputs (windowed reductions that return pairs,
# elementwise ops) repeat it for each.


def _rule_windowed(eqn, ins, shape) -> Info:
    p, prim = eqn.params, eqn.primitive.name
    if any(ins[1:]):
        raise ReceptiveFieldError(f"`{prim}` with an init value computed from the input.")
    if any(d != 1 for d in p.get("base_dilation", ())):
        raise ReceptiveFieldError(f"`{prim}` with base dilation is not supported.")
    window = (p["window_dimensions"], p["window_strides"], p["padding"], p["window_dilation"])
    return _windowed(ins[0], *window)


def _rule_pad(eqn, ins, shape) -> Info:
    if ins[1]:
        raise ReceptiveFieldError("`pad` with a padding value computed from the input.")
    out = {}
    for a, ax in ins[0].items():
        if ax.var_axis is not None:
            lo, _, interior = eqn.params["padding_config"][ax.var_axis]
            if interior:
                raise ReceptiveFieldError("`pad` with interior padding along a spatial axis.")
            ax = ax._replace(padding=ax.padding + lo * ax.stride)
        out[a] = ax
    return out


def _rule_slice(eqn, ins, shape) -> Info:
    strides = eqn.params["strides"] or (1,) * len(shape)
    out = {}
    for a, ax in ins[0].items():
        if ax.var_axis is not None:
            start, s = eqn.params["start_indices"][ax.var_axis], strides[ax.var_axis]
            ax = ax._replace(stride=ax.stride * s, padding=ax.padding - start * ax.stride)
        out[a] = ax
    return out


def _rule_broadcast(eqn, ins, shape) -> Info:
    dims, new_shape = eqn.params["broadcast_dimensions"], eqn.params["shape"]
    for ax in ins[0].values():
        if ax.var_axis is not None and shape[ax.var_axis] != new_shape[dims[ax.var_axis]]:
            raise ReceptiveFieldError("`broadcast_in_dim` broadcasts along a spatial axis.")
    return _relabel(ins[0], shape, dict(enumerate(dims)))


def _rule_squeeze(eqn, ins, shape) -> Info:
    dims = set(eqn.params["dimensions"])
    kept = [d for d in range(len(shape)) if d not in dims]
    return _relabel(ins[0], shape, {d: kept.index(d) for d in kept})


def _rule_expand_dims(eqn, ins, shape) -> Info:
    dims = sorted(eqn.params["dimensions"])
    mapping, j = {}, 0
    for d in range(len(shape)):
        while j in dims:
            j += 1
        mapping[d], j = j, j + 1
    return _relabel(ins[0], shape, mapping)


def _rule_stack(eqn, ins, shape) -> Info:
    # A new axis at `axis`: the operands' axes from there on move one place up; then a union,
    # as the stacked copies (e.g. im2col's shifted slices) are joined.
    axis = eqn.params["axis"]
    mapping = {d: d if d < axis else d + 1 for d in range(len(shape))}
    return _union([_relabel(info, shape, mapping) for info in ins], "stack")


def _rule_concatenate(eqn, ins, shape) -> Info:
    for info in ins:
        if any(ax.var_axis == eqn.params["dimension"] for ax in info.values()):
            raise ReceptiveFieldError("`concatenate` along a spatial axis is not supported.")
    return _union(ins, "concatenate")


_RULES = {
    **{prim: lambda eqn, ins, shape: _union(ins, eqn.primitive.name) for prim in _ELEMENTWISE},
    **{prim: _rule_windowed for prim in _WINDOWED},
    **{
        prim: lambda eqn, ins, shape: _reduce(ins[0], eqn.params["axes"], shape)
        for prim in _REDUCTIONS
    },
    "conv_general_dilated": lambda eqn, ins, shape: _conv(eqn, ins[0], ins[1]),
    "dot_general": lambda eqn, ins, shape: _dot_general(eqn, ins[0], ins[1]),
    "pad": _rule_pad,
    "slice": _rule_slice,
    "transpose": lambda eqn, ins, shape: _relabel(
        ins[0], shape, {old: new for new, old in enumerate(eqn.params["permutation"])}
    ),
    "broadcast_in_dim": _rule_broadcast,
    "squeeze": _rule_squeeze,
    "expand_dims": _rule_expand_dims,
    "reshape": lambda eqn, ins, shape: _reshape(ins[0], shape, eqn.params["new_sizes"]),
    "concatenate": _rule_concatenate,
    "stack": _rule_stack,
}


def _propagate(eqn, ins: list[Info]) -> list[Info]:
    """The infos of ``eqn``'s outputs, by the rule for its primitive."""
    if not any(ins):
        return [{} for _ in eqn.outvars]
    rule = _RULES.get(eqn.primitive.name)
    if rule is None:
        raise ReceptiveFieldError(
            f"cannot follow the primitive `{eqn.primitive.name}` through the receptive-field "
            "analysis; supported are convolutions, windowed reductions, pads, slices, reshapes "
            "that keep spatial axes, reductions, dot products and element-wise operations."
        )
    shape = eqn.invars[0].aval.shape if eqn.invars else ()
    return [rule(eqn, ins, shape)] * len(eqn.outvars)


def _reshape(info: Info, old, new) -> Info:
    """An axis survives a reshape when the same block of memory keeps its size; otherwise it
    was merged with others (e.g. Flatten) and is treated as reduced over."""
    mapping, start = {}, 0
    for o in range(len(old)):
        # The first new axis from `start` on at the same memory offset with the same size, in
        # order, so that axes of size 1 (a 1x1 map) pair up one to one.
        offset = math.prod(old[:o])
        match = next(
            (
                n
                for n in range(start, len(new))
                if math.prod(new[:n]) == offset and new[n] == old[o]
            ),
            None,
        )
        mapping[o] = match
        if match is not None:
            start = match + 1
    return _relabel(info, old, mapping)


def _sub_jaxpr(eqn):
    for key in _SUBJAXPR_KEYS:
        sub = eqn.params.get(key)
        if sub is None:
            continue
        return getattr(sub, "jaxpr", sub)
    return None


def _walk(jaxpr, in_infos: list[Info]) -> list[Info]:
    env: dict[int, Info] = {}

    def read(v) -> Info:
        return env.get(id(v), {})

    for var, info in zip(jaxpr.invars, in_infos, strict=True):
        env[id(var)] = info
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        sub = _sub_jaxpr(eqn)
        if eqn.primitive.name == "cond" and any(ins):
            # Branches chosen at run time (e.g. by platform): a unit may see what any branch
            # sees, so each output's field is the union over the branches. Operand 0 is the
            # branch index.
            per_branch = [_walk(b.jaxpr, ins[1:]) for b in eqn.params["branches"]]
            outs = [_union(list(infos), "cond") for infos in zip(*per_branch, strict=True)]
        elif sub is not None and any(ins):
            # custom_vjp/jvp calls pass extra leading inputs (e.g. residual consts); align right.
            sub_ins = ([{}] * (len(sub.invars) - len(ins)) + ins)[-len(sub.invars) :]
            outs = _walk(sub, sub_ins)[: len(eqn.outvars)]
        else:
            outs = _propagate(eqn, ins)
        for var, info in zip(eqn.outvars, outs, strict=True):
            env[id(var)] = info
    return [read(v) for v in jaxpr.outvars]


def _to_field(info: Info, nd: int) -> ReceptiveField | None:
    if not info:
        return None
    axes = [info[a] for a in range(nd)]
    is_global = any(ax.var_axis is None for ax in axes)
    return ReceptiveField(
        size=tuple(ax.size for ax in axes),
        stride=tuple(0 if is_global else ax.stride for ax in axes),
        padding=tuple(ax.padding for ax in axes),
        is_global=is_global,
    )


def receptive_field(
    fn: Callable[[jnp.ndarray], Any],
    input_shape: Sequence[int],
    *,
    dtype: Any = jnp.float32,
) -> Any:
    """Receptive field of every output of ``fn`` with respect to its input.

    Args:
      fn: a function of one channels-last array (N, *spatial, C); for a Flax model,
        ``lambda x: model.apply(variables, x, train=False)``. It may return a pytree (a dict of
        named intermediates gives a per-layer analysis).
      input_shape: the input's shape, e.g. (1, 224, 224, 3). Only shapes are traced.

    Returns:
      The output pytree with each array replaced by a :class:`ReceptiveField` (``None`` for
      outputs that do not depend on the input).

    Raises:
      ReceptiveFieldError: for graphs it cannot analyse, naming the primitive.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) < 3:
        raise ValueError(
            f"`input_shape` must be (N, *spatial, C) with at least one spatial axis, "
            f"got {input_shape}."
        )
    nd = len(input_shape) - 2
    closed = jax.make_jaxpr(fn, return_shape=True)(jax.ShapeDtypeStruct(input_shape, dtype))
    closed, out_shapes = closed
    start = {a: _Axis(a + 1, 1, 1, 0) for a in range(nd)}
    outs = _walk(closed.jaxpr, [start])
    treedef = jax.tree.structure(out_shapes)
    fields = [_to_field(info, nd) for info in outs]
    return jax.tree.unflatten(treedef, fields)


class LayerRow(NamedTuple):
    name: str
    shape: tuple[int, ...]
    field: ReceptiveField | None


def receptive_field_table(
    fn: Callable[[jnp.ndarray], dict[str, jnp.ndarray]], input_shape: Sequence[int]
) -> list[LayerRow]:
    """One row per named output of ``fn`` (a dict of intermediate activations), in the order
    ``fn`` inserted them (pytrees sort dict keys, so the order is recorded while tracing)."""
    order: list[str] = []

    def recording(x):
        out = fn(x)
        order[:] = list(out)
        return out

    shapes = jax.eval_shape(recording, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    fields = receptive_field(fn, input_shape)
    return [LayerRow(name, tuple(shapes[name].shape), fields[name]) for name in order]


def last_spatial_field(model, input_shape: Sequence[int]) -> ReceptiveField:
    """The receptive field of a network's last spatial feature map: the units its global
    pooling averages (or its classifier reads).

    ``model`` is a Flax module whose ``apply(variables, x, return_features=True)`` returns
    ``(logits, {name: activation})`` in layer order, as every :mod:`cnnjax.models` network
    does; ``input_shape`` is (1, H, W, C). Only shapes are used: nothing is initialised.

    Raises:
      ReceptiveFieldError: every layer sees the whole image (dense layers), or an operation
        the analysis cannot follow.
    """
    shape = tuple(input_shape)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros(shape))
    # The analysis needs shapes only; zeros avoid running the initialisers.
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    rows = receptive_field_table(
        lambda x: model.apply(variables, x, return_features=True)[1], shape
    )
    spatial = [r.field for r in rows if r.field is not None and not r.field.is_global]
    if not spatial:
        raise ReceptiveFieldError("every layer sees the whole image (`dense` layers)")
    return spatial[-1]


def format_table(rows: Sequence[LayerRow]) -> str:
    """Markdown table: layer, output size, receptive field, effective stride, padding."""

    def fmt(values):
        return "x".join(str(v) for v in values)

    lines = [
        "| layer | output | receptive field | effective stride | effective padding |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        f = row.field
        if f is None:
            cells = ["-", "-", "-"]
        elif f.is_global:
            cells = [f"{fmt(f.size)} (global)", "-", fmt(f.padding)]
        else:
            cells = [fmt(f.size), fmt(f.stride), fmt(f.padding)]
        lines.append(f"| {row.name} | {fmt(row.shape)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class EmpiricalField(NamedTuple):
    start: tuple[int, ...]  # first input pixel with a non-zero gradient, per spatial axis
    stop: tuple[int, ...]  # last such pixel (inclusive)

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(b - a + 1 for a, b in zip(self.start, self.stop, strict=True))


def empirical_receptive_field(
    fn: Callable[[Any, jnp.ndarray], jnp.ndarray],
    params: Any,
    input_shape: Sequence[int],
    *,
    index: Sequence[int] | None = None,
    samples: int = 4,
    seed: int = 0,
) -> EmpiricalField:
    """Extent of the non-zero gradient of one output unit with respect to the input.

    ``fn(params, x)`` returns a channels-last map (N, *spatial, C); the unit at spatial
    ``index`` (default: the centre) of the first image, summed over channels, is
    differentiated. Gradients from ``samples`` random inputs are combined, so that a max-pool
    routing the gradient to one arg-max per window does not hide part of the field.
    """
    input_shape = tuple(input_shape)
    nd = len(input_shape) - 2
    out_shape = jax.eval_shape(lambda x: fn(params, x), jnp.zeros(input_shape)).shape
    if len(out_shape) != nd + 2:
        raise ValueError(
            f"`fn` must return a map (N, *spatial, C) with {nd} spatial axes, got {out_shape}."
        )
    if index is None:
        index = tuple(n // 2 for n in out_shape[1:-1])

    def unit(x):
        return jnp.sum(fn(params, x)[(0, *index)])

    grad = jax.jit(jax.grad(unit))
    support = np.zeros(input_shape[1:-1], bool)
    for key in jax.random.split(jax.random.key(seed), samples):
        g = np.asarray(grad(jax.random.normal(key, input_shape)))
        support |= np.any(g[0] != 0, axis=-1)
    if not support.any():
        raise ValueError("the chosen unit has a zero gradient everywhere (dead unit?).")
    start, stop = [], []
    for axis in range(nd):
        hit = np.nonzero(np.any(support, axis=tuple(a for a in range(nd) if a != axis)))[0]
        start.append(int(hit[0]))
        stop.append(int(hit[-1]))
    return EmpiricalField(tuple(start), tuple(stop))
