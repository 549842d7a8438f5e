"""The inference goal of reward-conditioned DPO, chosen on the validation split (goal-aware SFT).

    python -m jaxpref.eval.compare --spec=bench/rcdpo_goal_val.py --out=docs/results/rcdpo_goal_val
    python bench/rcdpo_goal_choice.py --val=docs/results/rcdpo_goal_val --test=docs/results/rcdpo_scored_sft

The augmented variants of ``bench/rcdpo_scored_sft.py``, measured on validation prompts (``task.num_val_prompts``
256, drawn from a generator of their own, so SFT, training pairs and test prompts are those of the test runs).
Each run's ``goal_sweep`` is the validation gold reward at every goal; ``bench/rcdpo_goal_choice.py`` picks the
goal with the best mean over seeds and reports the test gold reward there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcdpo_scored_sft  # noqa: E402

FLIP_RATES = rcdpo_scored_sft.FLIP_RATES
SEEDS = rcdpo_scored_sft.SEEDS
METRICS = ("gold_reward", "gold_reward_unconditioned", "clean_accuracy", "kl")
TITLE = "reward-conditioned DPO, goal-aware SFT, validation split (5 seeds)"


def get_variants():
    variants = {k: v for k, v in rcdpo_scored_sft.get_variants().items() if k.startswith("augmented")}
    for cfg in variants.values():
        cfg.task.num_val_prompts = 256
        cfg.task.eval_split = "validation"
    return variants
