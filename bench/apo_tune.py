"""Tuning for the APO table, on the validation split only: APO and its baseline get grids of the same size.

    python -m jaxpref.eval.compare --spec=bench/apo_tune.py --out=docs/results/apo_tune --task_cache=/tmp/task_cache

On seed 0's task (``configs/apo_synthetic.py``, no label noise), metrics measured on the validation prompts and
clean pairs (``task.eval_split = "validation"``), never on the test split the table reports:

* the base RM (``apo_weight = 0``): the RM's learning rate x the policy update (rejection sampling | DPO);
* APO: its adversarial weight ``c_apo`` (0.1, the paper's; 1.0) x the policy update, the RM at the shipped 1e-3.

Each method's best validation gold reward of its final policy picks its setting for ``bench/apo_table.py``.
"""

import os

from jaxpref.configs_base import load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FLIP_RATES = (0.0,)
SEEDS = (0,)
POLICY_UPDATES = {"rjs": "rejection_sampling", "dpo": "dpo"}
RM_LEARNING_RATES = (3e-4, 1e-3)  # the base RM's knob
APO_WEIGHTS = (0.1, 1.0)  # APO's knob
METRICS = ("gold_reward", "rm_sample_agreement", "best_of_k_gold", "rm_accuracy", "rm_golden_accuracy", "kl", "win_rate")
TITLE = "APO tuning on the validation split (seed 0)"


def method(name: str, *, update: str, rm_learning_rate: float | None = None, apo_weight: float | None = None):
    """The config of ``name`` (``base_rm`` | ``apo``) with policy update ``update`` (``rjs`` | ``dpo``)."""
    c = load_config_file(os.path.join(ROOT, "apo_synthetic.py"))
    c.apo.policy_update = POLICY_UPDATES[update]
    if name == "base_rm":
        c.apo.apo_weight = 0.0
    elif name == "apo":
        c.apo.apo_weight = apo_weight if apo_weight is not None else c.apo.apo_weight
    else:
        raise ValueError(f"unknown method {name!r}")
    if rm_learning_rate is not None:
        c.reward_model.train.learning_rate = rm_learning_rate
    return c


def get_variants():
    out = {}
    for update in POLICY_UPDATES:
        for lr in RM_LEARNING_RATES:
            out[f"base_rm_{update}_rmlr{lr:g}"] = method("base_rm", update=update, rm_learning_rate=lr)
        for w in APO_WEIGHTS:
            out[f"apo_{update}_w{w:g}"] = method("apo", update=update, apo_weight=w)
    for c in out.values():
        c.task.eval_split = "validation"
    return out
