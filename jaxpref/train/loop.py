"""The training loop: optimizer steps over a batch source, with checkpoints, logging, preemption and a NaN stop.

:func:`fit` knows nothing of models, data files or algorithms: it takes the jitted steps, a starting
state, an iterator of device batches and callbacks, and returns the final state and a :class:`FitResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxpref.train import preemption
from jaxpref.train.step import Batch, StepFns

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FitResult:
    """``status``: ``"done"`` (reached the target step) or ``"preempted"`` (a signal arrived; the state was
    saved); ``step``: the optimizer steps taken in total; ``last_metrics``: the last step's metrics."""

    status: str
    step: int
    last_metrics: dict

    def __getitem__(self, key):
        return getattr(self, key)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Hooks:
    """Callbacks of :func:`fit` (all optional).

    * ``save(state, step)``: write a checkpoint (called every ``save_every`` steps, on preemption and at the end).
    * ``last_saved() -> int | None``: the step of the newest checkpoint (named in the NaN message).
    * ``discard(step)``: drop a checkpoint that turned out to hold diverged params.
    * ``log(step, metrics)``: record a step's metrics; ``evaluate(state, step)``: periodic evaluation.
    * ``on_step(step, metrics, state) -> state | None``: anything else (tests inject faults here).
    """

    save: Callable[[Any, int], None] | None = None
    last_saved: Callable[[], int | None] | None = None
    discard: Callable[[int], None] | None = None
    log: Callable[[int, dict], None] | None = None
    evaluate: Callable[[Any, int], None] | None = None
    on_step: Callable[..., Any] | None = None


def fit(steps: StepFns, state, batches: Iterator[Batch], *, target: int, ref_params=None, grad_accum: int = 1,
        save_every: int = 0, log_every: int = 1, eval_every: int = 0, hooks: Hooks | None = None,
        progress: bool = True, label: str = "train", checkpoint_dir: str = "") -> tuple[Any, FitResult]:
    """Take optimizer steps until ``state.step == target``.

    Each step accumulates ``grad_accum`` micro-batches from ``batches`` and applies one update. A
    non-finite loss raises ``FloatingPointError`` before anything is saved; because the loss of step ``k``
    is computed from the params of step ``k - 1``, a checkpoint of step ``k - 1`` is discarded too, so the
    checkpoint the message names held params whose next loss was finite. A SIGTERM/SIGINT (see
    :mod:`jaxpref.train.preemption`) finishes the step, saves and returns ``status="preempted"``.
    """
    hooks = hooks or Hooks()
    from tqdm.auto import tqdm

    start = int(jax.device_get(state.step))
    bar = tqdm(total=target, initial=start, desc=label, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True)
    status, last = "done", {}
    try:
        while int(jax.device_get(state.step)) < target:
            t0 = time.perf_counter()
            acc = steps.zero(state.params)
            tokens = 0
            for _ in range(grad_accum):
                batch = next(batches)
                tokens += _tokens(batch)
                acc = steps.accumulate(state.params, ref_params, acc, batch)
            state, metrics = steps.apply(state, acc)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            step = int(jax.device_get(state.step))
            if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
                _stop_nonfinite(metrics, step, hooks, checkpoint_dir)
            dt = time.perf_counter() - t0
            metrics.update({"tokens_per_s": tokens / dt, "pairs_per_s": metrics["pairs"] / dt, "step_time_s": dt})
            last = metrics
            if hooks.log is not None and (step % log_every == 0 or step == target):
                hooks.log(step, metrics)
            if hooks.evaluate is not None and eval_every and step % eval_every == 0:
                hooks.evaluate(state, step)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
            if hooks.on_step is not None:
                replaced = hooks.on_step(step, metrics, state)
                state = state if replaced is None else replaced
            if hooks.save is not None and save_every and step % save_every == 0:
                hooks.save(state, step)
            if preemption.requested(step):
                status = "preempted"
                break
        if hooks.save is not None:
            hooks.save(state, int(jax.device_get(state.step)))
    finally:
        bar.close()
    return state, FitResult(status, int(jax.device_get(state.step)), last)


def _tokens(batch: Batch) -> int:
    """Real tokens of the global batch (this host's slice times the host count)."""
    local = sum(int(np.asarray(s.data).sum()) for s in batch.attention_mask.addressable_shards
                if s.replica_id == 0)
    return local * jax.process_count()


def _stop_nonfinite(metrics: dict, step: int, hooks: Hooks, checkpoint_dir: str) -> None:
    last = hooks.last_saved() if hooks.last_saved is not None else None
    if last is not None and last == step - 1 and hooks.discard is not None:
        # the params saved at step-1 are the ones whose loss just diverged
        hooks.discard(last)
        last = hooks.last_saved()
    good = f"step {last}" if last is not None else "none"
    raise FloatingPointError(
        f"non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) at step {step}; stopped "
        f"without saving. The last good checkpoint ({good}) in {checkpoint_dir or 'the workdir'} is intact (its "
        "params gave a finite loss). Lower config.train.learning_rate and resume with --allow_config_changes, or "
        "check the data.")
