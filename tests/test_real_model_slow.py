"""Real pairs with a real model: DPO of SmolLM2-135M on the shipped HH pairs (slow; `pytest -m slow`)."""

import os

import numpy as np
import pytest

from hf_fixtures import smollm2_hf_dir

from jaxpref.configs_base import load_config_file
from helpers import trainer_from_config


@pytest.mark.slow
def test_smollm2_dpo_on_hh_reports_preference_accuracy(tmp_path):

    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_smollm2_hh.py"))
    path = smollm2_hf_dir()
    cfg.model.hf_dir = cfg.tokenizer.path = path
    cfg.data.max_rows = 48
    cfg.data.eval_fraction = 1 / 3
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.buckets = 128, 96, (128,)
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.save_every = 2, 0, 0
    cfg.train.learning_rate = 1e-6
    cfg.reference.mode = "frozen"
    cfg.mesh.num_devices = 1
    cfg.export.hf = False
    trainer = trainer_from_config(cfg, str(tmp_path), progress=False)
    before = trainer.evaluate()
    assert abs(before["loss"] - np.log(2)) < 1e-4  # policy == reference at the start
    trainer.fit()
    after = trainer.evaluate()
    trainer.close()
    assert 0.0 <= after["rewards/accuracies"] <= 1.0 and np.isfinite(after["loss"])
