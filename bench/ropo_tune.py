"""Tuning for the ROPO table, on the validation split only: every method gets the same grid.

    python -m jaxpref.eval.compare --spec=bench/ropo_tune.py --out=docs/results/ropo_tune

DPO, cDPO, rDPO (both with their assumed noise rate set to the true 20%) and ROPO, each at the learning rates
of ``LEARNING_RATES`` and the betas of ``BETAS``, on seed 0's task at 20% flips; metrics are measured on the validation prompts and clean
pairs (``task.eval_split = "validation"``), never on the test split the table reports. Each method's best
validation gold reward picks its learning rate and beta for ``bench/ropo_table.py``.
"""

import os

from jaxpref.configs_base import load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FLIP_RATES = (0.2,)
SEEDS = (0,)
LEARNING_RATES = (3e-4, 1e-3)
# beta 0.1 (DPO's usual) left the implicit margins at |u| < 0.5 after one epoch, where ROPO's loss cannot act
# (it damps only u < -1.3); 1.0 puts them in that range. Every method gets both.
BETAS = (0.1, 1.0)
METRICS = ("gold_reward", "win_rate", "clean_accuracy", "kl", "flag_precision", "flag_auroc")
TITLE = "ROPO tuning on the validation split (seed 0, 20% flips)"


def method(name: str, flip_rate: float, learning_rate: float, beta: float):
    """The config of ``name`` (dpo | cdpo | rdpo | ropo) at ``flip_rate`` (cDPO's and rDPO's epsilon)."""
    c = load_config_file(os.path.join(ROOT, "ropo_synthetic.py" if name == "ropo" else "dpo_noisy_synthetic.py"))
    if name == "cdpo":
        c.loss.label_smoothing = flip_rate
    elif name == "rdpo":
        c.loss.type, c.loss.label_smoothing = "robust", flip_rate
    c.train.learning_rate, c.loss.beta = learning_rate, beta
    return c


def get_variants():
    out = {}
    for name in ("dpo", "cdpo", "rdpo", "ropo"):
        for beta in BETAS:
            for lr in LEARNING_RATES:
                def variant(rate, name=name, lr=lr, beta=beta):
                    c = method(name, rate, lr, beta)
                    c.task.eval_split = "validation"
                    return c
                out[f"{name}_lr{lr:g}" + ("" if beta == 0.1 else f"_b{beta:g}")] = variant
    return out
