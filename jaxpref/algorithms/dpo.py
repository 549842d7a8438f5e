"""DPO (and every loss of the DPO family): one training pass with ``config.loss``."""

from __future__ import annotations

from jaxpref.tasks import TaskInputs
from jaxpref.train.runtime import Runtime
from jaxpref.train.trainer import Trainer, require_done


def train(runtime: Runtime, inputs: TaskInputs, workdir: str, *, progress: bool = True) -> dict:
    """Train from ``inputs.params`` on ``inputs.rows``; evaluate on ``inputs.eval_rows`` (the ``eval`` metrics) and
    with the task's ``evaluate`` callback; export the policy as a HF directory when ``config.export.hf`` (with
    LoRA: merged, plus the PEFT adapter in ``hf_adapter/``)."""
    trainer = Trainer(runtime, workdir, inputs.rows, params=inputs.params, eval_rows=inputs.eval_rows, label="DPO",
                      progress=progress)
    try:
        summary = trainer.fit()
        require_done(summary, "DPO training")
        result = {"algorithm": "dpo", **summary.as_dict(), **runtime.param_counts(), "eval": trainer.evaluate(),
                  "tokenization": trainer.data_report()}
        if inputs.evaluate is not None:
            result.update(inputs.evaluate(trainer.merged_params(), rows=inputs.rows,
                                          clean_accuracy=result["eval"].get("rewards/accuracies")))
        result.update(trainer.maybe_export(summary))
    finally:
        trainer.close()
    return result
