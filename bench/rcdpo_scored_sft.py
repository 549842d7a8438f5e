"""Reward-conditioned DPO when goals mean something before preference training: the SFT policy's goal tokens
carry each SFT response's own rank-scaled gold reward (``task.sft_goals = "score"``) instead of a random one.

    python -m jaxpref.eval.compare --spec=bench/rcdpo_scored_sft.py --out=docs/results/rcdpo_scored_sft

The variants of ``bench/rcdpo_table.py`` (DPO on N pairs, the 2N augmented pairs at DPO's steps and at its
epochs, and the two halves), on the
task with goal-aware SFT. A 7B model reads "Overall score: 10" before any reward-conditioned training; a
random goal token teaches the tiny policy to ignore goals, which this variant of the task removes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcdpo_table  # noqa: E402

FLIP_RATES = rcdpo_table.FLIP_RATES
SEEDS = rcdpo_table.SEEDS
BASELINE = rcdpo_table.BASELINE
METRICS = rcdpo_table.METRICS
TITLE = "reward-conditioned DPO, goal-aware SFT (5 seeds)"


def get_variants():
    variants = {k: v for k, v in rcdpo_table.get_variants().items()
                if k in ("dpo", "augmented", "augmented_equal_epochs", "only_goal_chosen", "only_goal_rejected")}
    for cfg in variants.values():
        cfg.task.sft_goals = "score"
    return variants
