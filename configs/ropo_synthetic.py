"""ROPO on the gold-reward task (20% flipped labels by default).

    python -m jaxpref.main --config=configs/ropo_synthetic.py --workdir=/tmp/ropo_syn --config.seed=1
    python -m jaxpref.eval.experiment --config=configs/ropo_synthetic.py --flip_rates=0,0.2,0.4 --seeds=0,1,2 --out=DIR
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    # same task, model, data and optimiser as the DPO baseline
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_synthetic.py"))
    c.algorithm = "ropo"
    c.data.flip_rate = 0.2
    c.train.num_epochs = 2.0  # per round: 2 rounds x 2 epochs = the DPO baseline's 4 epochs
    c.ropo.rounds = 2
    c.ropo.filter_ratio = 0.2
    c.ropo.alpha = 14.0
    c.ropo.max_new_tokens = 10
    return c
