"""Reward-conditioned DPO with a tiny random Llama on the shipped HH sample, on CPU in a few minutes.

HH has no quality scores, so this uses the paper's implicit-reward variant: a DPO pass scores every
response by ``beta * log(pi/pi_ref)``, the scores are rank-mapped onto 1-10, and the relabelled 2N pairs train.

    python -m jaxpref.main --config=configs/rcdpo_tiny.py --workdir=/tmp/rcdpo_tiny
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_tiny.py"))
    c.algorithm = "reward_conditioned"
    c.data.max_rows = 128
    c.data.max_prompt_length = 160  # the goal text adds ~45 tokens
    c.data.max_length = 256
    c.data.buckets = (128, 256)
    c.train.num_steps = 20
    c.train.save_every = 0
    c.reward_conditioned.scores = "implicit"
    return c
