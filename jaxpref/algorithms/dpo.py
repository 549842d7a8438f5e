"""DPO (and every loss of the DPO family): one pass of :meth:`Trainer.fit` with ``config.loss``."""

from __future__ import annotations

from jaxpref.train.logging import write_results
from jaxpref.train.trainer import Trainer


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Train, evaluate on the eval split (if any), export the policy as a HF directory; write results.json."""
    trainer = Trainer(cfg, workdir, progress=progress)
    try:
        summary = trainer.fit()
        result = {"algorithm": "dpo", **summary, "eval": trainer.evaluate() if trainer.eval_batcher else {}}
        result.update(trainer.maybe_export(summary))
    finally:
        trainer.close()
    write_results(workdir, result)
    return result


def run_on_task(cfg, td, rows, workdir: str, *, progress: bool = False) -> dict:
    """Train from the task's SFT policy on ``rows``; evaluate on held-out prompts and clean pairs."""
    from jaxpref.eval.experiment import evaluate_policy, high_rejected_unlearning

    trainer = Trainer(cfg, workdir, rows=rows, eval_rows=td.eval_rows, model_and_params=(td.model, td.sft_params),
                      progress=progress)
    try:
        trainer.fit(resume=False)
        clean = trainer.evaluate()["rewards/accuracies"]
        result = {"algorithm": cfg.algorithm, **evaluate_policy(td, trainer.state.params, clean_accuracy=clean,
                                                                seed=cfg.seed),
                  "unlearning_high_rejected": high_rejected_unlearning(td, trainer.state.params, rows)}
    finally:
        trainer.close()
    return result
