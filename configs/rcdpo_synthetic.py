"""Reward-conditioned DPO on the gold-reward task: pairs scored by the gold reward on a 1-10 goal scale.

    python -m jaxpref.main --config=configs/rcdpo_synthetic.py --workdir=/tmp/rcdpo_syn --config.seed=1
    python -m jaxpref.eval.compare --spec=bench/rcdpo_table.py --out=results/rcdpo_table

The task reserves 10 goal tokens (ids 32..41); goal g conditions a prompt as ``[BOS, goal_token(g), prompt...]``.
Gold rewards map onto the scale by rank over the training responses. The recipe is the one chosen on the
validation split (``bench/rcdpo_goal_val.py``, ``bench/rcdpo_goal_choice.py``), never on the test prompts:

* goal-aware SFT (``task.sft_goals = "score"``): half the SFT examples carry their response's own goal score,
  so goals mean something before preference training, as "Overall score: 10" does to a 7B model (with
  random goal tokens the policy learns to ignore them and the 2N relabelled pairs contradict each other);
* 2N pairs x 2 epochs (DPO's step budget; equal epochs scored lower on validation);
* inference at goal 8, the best validation goal: the top of a rank scale holds the rarest responses, so goal
  10 is the least trained one here.

``bench/rcdpo_table.py`` keeps the paper's defaults (random SFT goals, goal 10) for its comparison.
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_synthetic.py"))
    c.algorithm = "reward_conditioned"
    c.task.goal_tokens = 10
    c.tokenizer.path = "int:42"
    c.data.max_prompt_length = 8  # BOS + goal token + 6 prompt tokens
    c.train.num_epochs = 2.0  # 2N pairs x 2 epochs = the DPO baseline's N pairs x 4 epochs (same steps)
    c.reward_conditioned.scale_min = 1.0
    c.reward_conditioned.scale_max = 10.0
    c.reward_conditioned.ties = "keep"
    c.task.sft_goals = "score"
    c.reward_conditioned.inference_goal = 8.0
    return c
