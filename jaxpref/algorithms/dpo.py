"""DPO (and every loss of the DPO family): one pass of :meth:`Trainer.fit` with ``config.loss``."""

from __future__ import annotations

import json
import os

import jax

from jaxpref.train.trainer import Trainer


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Train, evaluate on the eval split (if any), export the policy as a HF directory; write results.json."""
    trainer = Trainer(cfg, workdir, progress=progress)
    try:
        summary = trainer.fit()
        result = {"algorithm": "dpo", **summary, "eval": trainer.evaluate() if trainer.eval_batcher else {}}
        if summary["status"] == "done" and cfg.get("export", {}).get("hf", True):
            result["hf_export"] = trainer.export_hf()
    finally:
        trainer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(result, f, indent=2, default=float)
    return result
