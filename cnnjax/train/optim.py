"""Optax optimisers and learning-rate schedules, in units of epochs."""

from __future__ import annotations

import jax
import optax


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """Piecewise (×``decay_factor`` at ``decay_epochs``), cosine or constant, after an optional
    linear warm-up of ``warmup_epochs``."""
    lr = config.learning_rate
    total = config.num_epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "piecewise":
        boundaries = {
            int(e * steps_per_epoch): config.decay_factor
            for e in config.decay_epochs
            if 0 < e * steps_per_epoch
        }
        main = optax.piecewise_constant_schedule(lr, boundaries)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
    else:
        main = optax.constant_schedule(lr)
    if warmup <= 0:
        return main
    if config.schedule == "piecewise":
        # Piecewise boundaries are absolute epochs: do not shift them by the warm-up.
        return lambda step: main(step) * optax.linear_schedule(0.0, 1.0, warmup)(step)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _kernels_only(params):
    """Decay matrices and convolution kernels, not biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(config, steps_per_epoch)
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == "sgd":
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=_kernels_only))
        parts.append(
            optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
        )
    else:
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=_kernels_only))
    return optax.chain(*parts), schedule
