"""ROPO with a tiny random Llama on the shipped HH sample (20% injected flips), on CPU in a few minutes.

    python -m jaxpref.main --config=configs/ropo_tiny.py --workdir=/tmp/ropo_tiny
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_tiny.py"))
    c.algorithm = "ropo"
    c.data.flip_rate = 0.2
    c.train.num_steps = 20  # per round
    c.ropo.rounds = 2
    c.ropo.filter_ratio = 0.2
    c.ropo.num_candidates = 2
    c.ropo.max_new_tokens = 32
    return c
