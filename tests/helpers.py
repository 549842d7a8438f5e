"""Shared test helpers: run an algorithm through the same path as the CLI and capture its final params."""

from __future__ import annotations

import jax


def run_algorithm(cfg, workdir: str, *, task_data=None, progress: bool = False):
    """``(result, final params on the host)`` of ``cfg.algorithm`` over the task adapter of ``cfg`` (with prebuilt
    gold-task data ``task_data``). The params are captured through the task's evaluation callback -- the hook
    every algorithm calls with its final policy."""
    from jaxpref.algorithms import ALGORITHMS
    from jaxpref.pipeline import task_inputs
    from jaxpref.train.runtime import Runtime

    inputs = task_inputs(cfg, task_data=task_data)
    runtime = Runtime.build(cfg, model=inputs.model, tokenizer=inputs.tokenizer)
    if inputs.params is None:
        inputs.params = runtime.initial_params()
    captured = {}
    evaluate = inputs.evaluate

    def capture(params, **context):
        captured["params"] = jax.device_get(params)
        return evaluate(params, **context) if evaluate is not None else {}

    inputs.evaluate = capture
    result = ALGORITHMS[cfg.algorithm].train(runtime, inputs, workdir, progress=progress)
    return result, captured.get("params")
