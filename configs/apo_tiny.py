"""APO with a tiny random Llama on the shipped HH sample, on CPU in a few minutes.

HH has no golden (stronger-model) answers, so the human-chosen response stands in for one
(``apo.golden_field = "chosen"``); real runs point ``golden_field`` at e.g. GPT-4 answers.

    python -m jaxpref.main --config=configs/apo_tiny.py --workdir=/tmp/apo_tiny
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_tiny.py"))
    c.algorithm = "apo"
    c.data.max_rows = 64
    c.train.num_steps = 8  # policy steps per round
    c.train.save_every = 0
    c.reward_model.train.num_steps = 8
    c.reward_model.train.learning_rate = 1e-3
    c.apo.rounds = 2
    c.apo.samples_per_prompt = 2
    c.apo.max_new_tokens = 16
    c.apo.golden_field = "chosen"
    c.apo.policy_prompt_fraction = 0.25
    c.apo.policy_learning_rates = (2e-3, 1e-3)
    return c
