"""Tuning for the ROPO table, on the validation split only: every method gets the same grid.

    python -m jaxpref.eval.compare --spec=bench/ropo_tune.py --out=docs/results/ropo_tune

DPO, cDPO, rDPO (both with their assumed noise rate set to the true 20%) and ROPO, each at the learning rates
of ``LEARNING_RATES``, on seed 0's task at 20% flips; metrics are measured on the validation prompts and clean
pairs (``task.eval_split = "validation"``), never on the test split the table reports. Each method's best
validation gold reward picks its learning rate for ``bench/ropo_table.py``.
"""

import os

from jaxpref.configs_base import load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FLIP_RATES = (0.2,)
SEEDS = (0,)
LEARNING_RATES = (3e-4, 1e-3)
METRICS = ("gold_reward", "win_rate", "clean_accuracy", "kl", "flag_precision", "flag_auroc")
TITLE = "ROPO tuning on the validation split (seed 0, 20% flips)"


def method(name: str, flip_rate: float, learning_rate: float):
    """The config of ``name`` (dpo | cdpo | rdpo | ropo) at ``flip_rate`` (cDPO's and rDPO's epsilon)."""
    c = load_config_file(os.path.join(ROOT, "ropo_synthetic.py" if name == "ropo" else "dpo_noisy_synthetic.py"))
    if name == "cdpo":
        c.loss.label_smoothing = flip_rate
    elif name == "rdpo":
        c.loss.type, c.loss.label_smoothing = "robust", flip_rate
    c.train.learning_rate = learning_rate
    return c


def get_variants():
    out = {}
    for name in ("dpo", "cdpo", "rdpo", "ropo"):
        for lr in LEARNING_RATES:
            def variant(rate, name=name, lr=lr):
                c = method(name, rate, lr)
                c.task.eval_split = "validation"
                return c
            out[f"{name}_lr{lr:g}"] = variant
    return out
