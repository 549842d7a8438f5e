"""Standalone reward-model training: a tiny random Llama with a scalar head on the shipped HH pairs, on CPU.

    python -m jaxpref.main --config=configs/rm_tiny.py --workdir=/tmp/rm_tiny

Reports held-out pair accuracy (results.json "accuracy") and exports a HF LlamaForSequenceClassification
directory (hf_export/). For a real RM set config.model.hf_dir to the SFT checkpoint.
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_tiny.py"))
    c.algorithm = "reward_model"
    c.reward_model.train.learning_rate = 1e-3
    c.reward_model.train.num_steps = 40
    c.reward_model.margin = 0.0
    c.reward_model.label_smoothing = 0.0
    return c
