"""Optax optimisers, learning-rate schedules and parameter groups, in units of epochs.

The transformation is ``clip -> multi_transform(groups)``: every parameter belongs to one
group, labelled by its learning-rate multiplier and the step it stops training at
(``lr_multipliers``, ``train_epochs``), or to the frozen group (``frozen``), or, with
``optimizer="muon"``, to the Muon group (the trainable convolution kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnnjax.errors import ConfigError
from cnnjax.train import groups

FROZEN, MUON = "frozen", "muon"


def total_steps(config, steps_per_epoch: int) -> int:
    """Steps of the whole run: ``ceil(num_epochs · steps_per_epoch)`` (epochs may be fractional)."""
    return max(1, math.ceil(config.num_epochs * steps_per_epoch - 1e-9))


def make_schedule(
    config, steps_per_epoch: int, total: int | None = None, lr: float | None = None
) -> optax.Schedule:
    """The learning rate per step: piecewise (×``decay_factor`` at ``decay_epochs``), cosine,
    constant or linear (to ``final_lr_factor`` of the rate), after an optional linear warm-up
    over ``warmup_epochs`` from ``warmup_start`` of the rate. ``lr``: the peak rate (default
    ``config.learning_rate``)."""
    lr = config.learning_rate if lr is None else lr
    total = total or total_steps(config, steps_per_epoch)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "piecewise":
        boundaries = {
            int(e * steps_per_epoch): config.decay_factor
            for e in config.decay_epochs
            if 0 < e * steps_per_epoch
        }
        main = optax.piecewise_constant_schedule(lr, boundaries)
    elif config.schedule == "cosine":
        cosine = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
        # optax mixes the integer step with a Python float; the float32 step it promotes to
        # under JAX's standard rules, given explicitly, also works where promotion is strict.
        main = lambda step: cosine(jnp.asarray(step, jnp.float32))
    elif config.schedule == "linear":
        main = optax.linear_schedule(lr, lr * config.final_lr_factor, max(total - warmup, 1))
    else:
        main = optax.constant_schedule(lr)
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(config.warmup_start * lr, lr, warmup)
    if config.schedule == "piecewise":
        # Piecewise boundaries are absolute epochs: do not shift them by the warm-up.
        return lambda step: main(step) * ramp(step) / lr
    return optax.join_schedules([ramp, main], [warmup])


def decoupled_hyperparameters(
    learning_rate: float, weight_decay: float, momentum: float, batch_size: int
) -> tuple[float, float]:
    """airbench's hyperparameters to a mean loss's: (rate, L2 coefficient).

    airbench states the rate and the weight decay per 1,024 examples of a *summed* loss and
    divides them by ``1 + 1/(1 - momentum)``, the gain of momentum, so that neither changes
    meaning with the batch size or the momentum: its SGD takes
    ``lr' = lr / kilo`` and ``wd' = wd · batch / kilo`` with ``kilo = 1024 (1 + 1/(1 − m))``
    and adds ``(wd' / lr') · p`` to the summed gradient. On a mean loss (the summed one over
    ``batch``) the same steps come from rate ``lr' · batch`` and coefficient ``wd / lr``.
    """
    kilo = 1024 * (1 + 1 / (1 - momentum))
    return learning_rate * batch_size / kilo, weight_decay / learning_rate


def _kernels_only(params):
    """Matrices and convolution kernels, not biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _limited(schedule: optax.Schedule, factor: float, until: float | None) -> optax.Schedule:
    """``schedule`` × ``factor``, and zero from step ``until`` on (when given)."""
    if until is None:
        return lambda step: schedule(step) * factor
    return lambda step: jnp.where(step < until, schedule(step) * factor, 0.0)


def _group_tx(config, schedule, decay: float, factor: float, until) -> Any:
    """One group's transformation: its own rate multiple, weight decay and end step."""
    rate = _limited(schedule, factor, until)
    on = None if config.weight_decay_on == "all" else _kernels_only
    if config.optimizer == "adamw":
        return optax.adamw(rate, weight_decay=decay, mask=on)
    # airbench's coefficient is wd / lr_group: a larger group rate, a smaller coefficient.
    coefficient = decay / factor if config.hyper_form == "per_1024" and factor else decay
    parts = [optax.add_decayed_weights(coefficient, mask=on)] if coefficient else []
    momentum = config.momentum or None
    parts.append(optax.sgd(rate, momentum=momentum, nesterov=config.nesterov))
    return optax.chain(*parts)


def _normalize_kernels() -> optax.GradientTransformation:
    """Adds to the updates what rescales each kernel to Frobenius norm sqrt(output channels)
    first, as airbench's Muon does before its step (the step then sets the direction only)."""

    def update(updates, state, params):
        target = lambda p: p * (jnp.sqrt(p.shape[-1]) / (jnp.linalg.norm(p) + 1e-12)) - p
        return jax.tree.map(lambda u, p: u + target(p), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _muon_tx(config, steps_per_epoch: int, total: int) -> optax.GradientTransformation:
    """airbench94_muon's kernel optimiser: Nesterov momentum orthogonalised by 3 Newton-Schulz
    steps (optax.contrib), a linearly decaying rate, kernels renormalised every step."""
    from optax.contrib import MuonDimensionNumbers, scale_by_muon  # only when asked for

    rate = optax.linear_schedule(config.muon_lr, 0.0, total)

    def dims(tree):  # rows: everything but the output channels (HWIO kernels, (in, out) matrices)
        return jax.tree.map(
            lambda p: MuonDimensionNumbers(tuple(range(p.ndim - 1)), (p.ndim - 1,)), tree
        )

    return optax.chain(
        scale_by_muon(
            ns_steps=3, beta=config.muon_momentum, nesterov=True, weight_dimension_numbers=dims
        ),
        optax.scale_by_learning_rate(rate),
        _normalize_kernels(),
    )


def param_labels(config, parsed: groups.ParamGroups) -> Callable[[Any], Any]:
    """The group label of every parameter, as a function of the parameter tree."""

    def label(path: str, p) -> str:
        if groups.lookup(path, parsed.frozen) is not None:
            return FROZEN
        muon = parsed.muon_params
        if config.optimizer == "muon" and (
            groups.lookup(path, muon) is not None if muon else p.ndim == 4
        ):
            return MUON
        factor = groups.lookup(path, parsed.lr_multipliers)
        return _group_key(
            1.0 if factor is None else factor, groups.lookup(path, parsed.train_epochs)
        )

    return lambda params: jax.tree.map(label, groups.param_paths(params), params)


def _group_key(factor: float, until: float | None) -> str:
    """The label of the group with rate multiple ``factor`` that trains until epoch ``until``."""
    return f"x{factor:g}" + ("" if until is None else f"@{until:g}")


def make_optimizer(
    config, steps_per_epoch: int, total: int | None = None, parsed: groups.ParamGroups | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The configured transformation over all parameter groups (``parsed``: the config's
    group fields, parsed here when not given), and the base schedule."""
    parsed = parsed or groups.parse_groups(config)
    total = total or total_steps(config, steps_per_epoch)
    lr, decay = config.learning_rate, config.weight_decay
    if config.hyper_form == "per_1024":
        lr, decay = decoupled_hyperparameters(lr, decay, config.momentum, config.batch_size)
    schedule = make_schedule(config, steps_per_epoch, total, lr)
    factors, epochs = parsed.lr_multipliers, parsed.train_epochs
    transforms = {FROZEN: optax.set_to_zero()}
    if config.optimizer == "muon":
        transforms[MUON] = _muon_tx(config, steps_per_epoch, total)
    for factor in {1.0, *(f for _, f in factors)}:
        for until in {None, *(e for _, e in epochs)}:
            end = None if until is None else round(until * steps_per_epoch)
            transforms[_group_key(factor, until)] = _group_tx(config, schedule, decay, factor, end)
    parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    parts.append(optax.multi_transform(transforms, param_labels(config, parsed)))
    return optax.chain(*parts), schedule


def check_groups(config, parsed: groups.ParamGroups, params) -> None:
    """Raises ConfigError for a group pattern that selects nothing, or Muon asked for
    parameters that are not convolution kernels."""
    groups.check_groups_match(params, parsed)
    if config.optimizer != "muon":
        return
    labels = param_labels(config, parsed)(params)
    chosen = [
        (path, p)
        for path, p, label in zip(
            jax.tree.leaves(groups.param_paths(params)),
            jax.tree.leaves(params),
            jax.tree.leaves(labels),
            strict=True,
        )
        if label == MUON
    ]
    if not chosen:
        raise ConfigError(
            "`config.optimizer='muon'` orthogonalises convolution kernels and matrices, and "
            f"none of model {config.model!r}'s trainable parameters is one."
        )
    for path, p in chosen:
        if p.ndim < 2:
            raise ConfigError(
                f"`config.muon_params` selects {path!r}, of shape {p.shape}: Muon "
                "orthogonalises matrices and convolution kernels, not vectors."
            )
