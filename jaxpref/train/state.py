"""TrainState, the optax optimizer from config, and sharded state creation.

``TrainState`` is a plain pytree ``(step, params, opt_state, rng)``. Shardings are derived MaxText-style:
``jax.eval_shape`` of the model init keeps Flax's ``nn.Partitioned`` boxes around every parameter, optax's
init maps over them so the optimizer moments inherit the same logical names, and one call to
:func:`jaxpref.sharding.logical_to_sharding` turns the whole abstract state into ``NamedSharding``s.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxpref import sharding as S

SCHEDULES = ("cosine", "linear", "constant")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)

    def apply_gradients(self, grads, tx: optax.GradientTransformation) -> "TrainState":
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state)


def learning_rate_schedule(learning_rate: float, total_steps: int, *, warmup_steps: int = 0,
                           schedule: str = "cosine", end_value_ratio: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then ``cosine``/``linear`` decay to
    ``end_value_ratio * learning_rate`` at ``total_steps`` (or ``constant``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}.")
    decay_steps = max(total_steps - warmup_steps, 1)
    end = learning_rate * end_value_ratio
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_value_ratio)
    elif schedule == "linear":
        decay = optax.linear_schedule(learning_rate, end, decay_steps)
    else:
        decay = optax.constant_schedule(learning_rate)
    if warmup_steps <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])


def make_optimizer(train_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping and the schedule above, from ``config.train``.

    Keys: ``learning_rate``, ``warmup_steps`` (or ``warmup_ratio`` of ``total_steps``), ``schedule``,
    ``weight_decay``, ``adam_b1``, ``adam_b2``, ``adam_eps``, ``max_grad_norm`` (0 = no clipping).
    """
    warmup = int(train_cfg.get("warmup_steps", 0) or round(train_cfg.get("warmup_ratio", 0.0) * total_steps))
    lr = learning_rate_schedule(train_cfg.learning_rate, total_steps, warmup_steps=warmup,
                                schedule=train_cfg.get("schedule", "cosine"))
    parts = []
    if train_cfg.get("max_grad_norm", 1.0):
        parts.append(optax.clip_by_global_norm(train_cfg.get("max_grad_norm", 1.0)))
    parts.append(optax.adamw(lr, b1=train_cfg.get("adam_b1", 0.9), b2=train_cfg.get("adam_b2", 0.999),
                             eps=train_cfg.get("adam_eps", 1e-8), weight_decay=train_cfg.get("weight_decay", 0.0)))
    return optax.chain(*parts), lr


def state_shardings(boxed_params_fn: Callable[[], Any], tx: optax.GradientTransformation, mesh, rules=S.LOGICAL_AXIS_RULES):
    """``NamedSharding`` pytree for a ``TrainState`` whose params come from ``boxed_params_fn`` (a function
    returning params with ``nn.Partitioned`` boxes, e.g. ``lambda: model.init(...)["params"]``)."""
    abstract = jax.eval_shape(lambda: TrainState.create(boxed_params_fn(), tx, jax.random.PRNGKey(0)))
    specs = nn.get_partition_spec(abstract)
    return S.logical_to_sharding(specs, mesh, rules)


def create_sharded_state(params, tx, rng, shardings) -> TrainState:
    """Place ``params`` (plain arrays) with the state's param shardings and build the optimizer state on device."""
    params = jax.device_put(params, shardings.params)
    init = jax.jit(lambda p, r: TrainState.create(p, tx, r), out_shardings=shardings)
    return init(params, rng)
