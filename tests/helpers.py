"""Shared test helpers: run an algorithm through the same path as the CLI and capture its final params."""

from __future__ import annotations

import jax


def trainer_from_config(cfg, workdir: str, **kwargs):
    """A :class:`jaxpref.train.Trainer` for a DPO-style run of ``cfg``: the runtime, the rows of ``config.data``
    (through the real-data adapter) and the starting params of ``config.model``."""
    from jaxpref.tasks import real
    from jaxpref.train import Runtime, Trainer

    runtime = Runtime.build(cfg)
    rows, eval_rows = real.load_rows(cfg)
    kwargs.setdefault("eval_rows", eval_rows)
    return Trainer(runtime, workdir, rows, params=runtime.initial_params(), **kwargs)


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


def preempt_during(monkeypatch, workdir_suffix: str, step: int, run, *, match: str) -> None:
    """Run ``run()`` with the CLI's signal handling, sending SIGTERM to this process after optimizer step ``step``
    of the training session whose workdir ends with ``workdir_suffix``; assert it unwinds with ``Preempted``
    (message matching ``match``) and leave the process as it was."""
    import os
    import signal

    import pytest

    from jaxpref import errors
    from jaxpref.train import preemption
    from jaxpref.train import trainer as trainer_mod

    original_fit = trainer_mod.Trainer.fit

    def fit_with_sigterm(self, *a, **k):
        if self.workdir.endswith(workdir_suffix):
            k["on_step"] = lambda s, m: os.kill(os.getpid(), signal.SIGTERM) if s == step else None
        return original_fit(self, *a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fit_with_sigterm)
    previous = preemption.handle_signals()
    try:
        with pytest.raises(errors.Preempted, match=match):
            run()
    finally:
        preemption.restore_signals(previous)
        preemption.clear()
        monkeypatch.setattr(trainer_mod.Trainer, "fit", original_fit)
