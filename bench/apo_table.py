"""Evidence: APO vs the base-RM baseline (apo_weight 0, same compute), with rejection sampling and
with DPO, plus the paper's ablations (no human-pair term; the "diff" form) and a heavier adversarial term
(apo_weight 1.0 instead of 0.1), with both policy updates.

    python -m jaxpref.eval.compare --spec=bench/apo_table.py --out=docs/results/apo_table

Per-round metrics are in each run's results.json ("rounds"); the table shows the last round.
"""

import os

from jaxpref.configs_base import load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FLIP_RATES = (0.0,)
SEEDS = (0, 1, 2)
METRICS = ("gold_reward", "rm_accuracy", "rm_golden_accuracy", "rm_sample_agreement", "best_of_k_gold", "kl", "win_rate")
TITLE = "APO vs base RM on the gold-reward task (3 seeds)"


def _cfg(**apo):
    c = load_config_file(os.path.join(ROOT, "apo_synthetic.py"))
    for k, v in apo.items():
        c.apo[k] = v
    return c


def get_variants():
    return {
        "apo_rjs": _cfg(),
        "base_rm_rjs": _cfg(apo_weight=0.0),
        "apo_dpo": _cfg(policy_update="dpo"),
        "base_rm_dpo": _cfg(apo_weight=0.0, policy_update="dpo"),
        "apo_rjs_no_human": _cfg(rank_weight=0.0),
        "apo_rjs_diff": _cfg(form="diff"),
        "apo_rjs_w1": _cfg(apo_weight=1.0),
        "apo_dpo_w1": _cfg(apo_weight=1.0, policy_update="dpo"),
        "apo_dpo_no_human": _cfg(rank_weight=0.0, policy_update="dpo"),
    }
