"""ROPO on the gold-reward task (20% flipped labels by default).

    python -m jaxpref.main --config=configs/ropo_synthetic.py --workdir=/tmp/ropo_syn --config.seed=1
    python -m jaxpref.eval.experiment --config=configs/ropo_synthetic.py --flip_rates=0,0.2,0.4 --seeds=0,1,2 --out=DIR
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("dpo_synthetic", os.path.join(os.path.dirname(__file__),
                                                                            "dpo_synthetic.py"))
_dpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_dpo)


def get_config():
    c = _dpo.get_config()  # same task, model, data and optimiser as the DPO baseline
    c.algorithm = "ropo"
    c.data.flip_rate = 0.2
    c.train.num_epochs = 2.0  # per round: 2 rounds x 2 epochs = the DPO baseline's 4 epochs
    c.ropo.rounds = 2
    c.ropo.filter_ratio = 0.2
    c.ropo.alpha = 14.0
    c.ropo.max_new_tokens = 10
    return c
