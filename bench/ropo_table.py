"""Evidence: DPO, cDPO, rDPO, ROPO and two ROPO ablations on the gold-reward task.

    python -m jaxpref.eval.compare --spec=bench/ropo_table.py --out=results/ropo_table

Every variant starts from the same SFT policy and pairs per seed (flipped per flip rate with the same seed).
DPO-family baselines: configs/dpo_synthetic.py (lr 1e-3, 4 epochs). ROPO: configs/ropo_synthetic.py with
the theta-step tuned on seed 0 / 20% flips (lr 5e-4, 4 epochs per round, 2 rounds; see BENCHMARKS.md).
"""

import os

from jaxpref.configs_base import load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FLIP_RATES = (0.0, 0.2, 0.4)
SEEDS = (0, 1, 2)
METRICS = ("gold_reward", "win_rate", "clean_accuracy", "kl", "flag_precision", "flag_recall")
TITLE = "ROPO vs DPO-family baselines on the gold-reward task (3 seeds)"


def _cfg(name: str, **overrides):
    c = load_config_file(os.path.join(ROOT, name))
    for dotted, value in overrides.items():
        node = c
        *path, leaf = dotted.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def get_variants():
    ropo = {"train.learning_rate": 5e-4, "train.num_epochs": 4.0}
    return {
        "dpo": _cfg("dpo_synthetic.py"),
        "cdpo": _cfg("dpo_synthetic.py", **{"loss.label_smoothing": 0.1}),
        "rdpo": _cfg("dpo_synthetic.py", **{"loss.type": "robust", "loss.label_smoothing": 0.1}),
        "ropo": _cfg("ropo_synthetic.py", **ropo),
        "ropo_no_rs": _cfg("ropo_synthetic.py", **ropo, **{"ropo.rejection_sampling": False}),
        "ropo_dpo_filter": _cfg("ropo_synthetic.py", **ropo, **{"ropo.train_loss": "dpo", "ropo.filter_loss": "dpo"}),
    }
