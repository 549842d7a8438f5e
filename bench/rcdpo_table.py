"""Evidence: DPO on N pairs vs DPO on the 2N reward-augmented pairs vs the half-size augmented set.

    python -m jaxpref.eval.compare --spec=bench/rcdpo_table.py --out=docs/results/rcdpo_table

Same SFT policy, pairs, model and step budget (DPO: N pairs x 4 epochs; augmented: 2N x 2; half: N x 4),
plus the augmented set with 3x the steps and at equal epochs (2N x 4 epochs, the paper's setting: twice DPO's
steps), and the two halves of the augmented set as controls (N pairs x 4
epochs each): only the goal = score_chosen pairs (DPO with a goal token) and only the swapped goal =
score_rejected pairs. Every variant uses the untuned task and method defaults (random goal tokens in SFT,
inference at goal 10), not the validation-chosen recipe ``configs/rcdpo_synthetic.py`` ships (goal-aware SFT,
goal 8: ``bench/rcdpo_scored_sft.py`` and ``bench/rcdpo_goal_val.py``). ``eval/rewards/chosen`` and
``eval/rewards/rejected`` are beta times the mean log-prob change (policy vs SFT) of the held-out clean pairs'
chosen and rejected responses, unconditioned.
"""

import os

from jaxpref.configs_base import gold_task_config, load_config_file, reward_conditioned_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FLIP_RATES = (0.0,)
SEEDS = (0, 1, 2, 3, 4)
BASELINE = "dpo"
METRICS = ("gold_reward", "gold_reward_unconditioned", "win_rate", "clean_accuracy", "clean_accuracy_goal_max",
           "eval/rewards/chosen", "eval/rewards/rejected", "unlearning_high_rejected", "kl")
TITLE = "reward-conditioned DPO on the gold-reward task (5 seeds)"


def _config():
    """``configs/rcdpo_synthetic.py`` with the two keys tuned on validation back at their declared defaults."""
    c = load_config_file(os.path.join(ROOT, "rcdpo_synthetic.py"))
    c.task.sft_goals = gold_task_config().sft_goals
    c.reward_conditioned.inference_goal = reward_conditioned_config().inference_goal
    return c


def get_variants():
    dpo = _config()
    dpo.algorithm = "dpo"
    dpo.train.num_epochs = 4.0
    augmented = _config()
    half = _config()
    half.reward_conditioned.half = True
    half.train.num_epochs = 4.0
    longer = _config()
    longer.train.num_epochs = 6.0  # 3x the step budget: does the goal-conditioned objective only need longer?
    equal_epochs = _config()
    equal_epochs.train.num_epochs = 4.0  # as many epochs over 2N pairs as DPO makes over N (the paper)
    halves = {}
    for which in ("goal_chosen", "goal_rejected"):
        c = _config()
        c.reward_conditioned.pairs = which
        c.train.num_epochs = 4.0  # N pairs x 4 epochs: DPO's step budget
        halves[f"only_{which}"] = c
    return {"dpo": dpo, "augmented": augmented, "augmented_half": half, "augmented_3x_steps": longer,
            "augmented_equal_epochs": equal_epochs, **halves}
