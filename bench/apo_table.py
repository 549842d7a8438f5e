"""Evidence: APO vs the base-RM baseline and the controls that tell the game from extra oracle data, on the
gold-reward task (``configs/apo_synthetic.py``), reported on the test split.

    python -m jaxpref.eval.compare --spec=bench/apo_table.py --out=docs/results/apo_table --task_cache=/tmp/task_cache

Every variant starts from the same SFT policy, human pairs and prompts per seed. Settings are the ones
``bench/apo_tune.py`` picked on the validation split, each method from a grid of the same size (``TUNED``);
the controls take APO's.

* ``base_rm``: the RM trained on human pairs only (``apo_weight = 0``; the adversarial pairs stay in its
  batches at weight 0, same compute) -- rejection sampling / RM-DPO, the paper's baseline;
* ``apo``: the game, golden answer = the task's gold-optimal response;
* ``apo_static``: APO's weight, but the adversarial pairs of round 1 (golden vs SFT samples) reused every round:
  the extra golden answers without the game;
* ``apo_good_golden``: golden answers that are good, not optimal (each ideal token kept with probability
  0.7-0.95 per prompt), as a stronger model's answers are;
* ``apo_w1``, ``apo_w1_static``: the ablation of a heavier adversarial term (c_apo 1.0 instead of the tuned 0.1),
  with and without refreshed adversarial pairs -- where the term has an effect, the static control asks whether
  the game causes it.

The main RM metric is ``rm_sample_agreement``: how often the RM orders two of the policy's own K samples as the
gold reward does (what best-of-K and the policy's DPO pairs rely on); ``best_of_k_gold`` is the gold reward of
the RM's pick among them. Per-round metrics are in each run's results.json ("rounds").
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apo_tune import method  # noqa: E402

FLIP_RATES = (0.0,)
SEEDS = (0, 1, 2, 3, 4)
BASELINE = "base_rm"
METRICS = ("gold_reward", "rm_sample_agreement", "best_of_k_gold", "rm_accuracy", "rm_golden_accuracy", "kl", "win_rate")
TITLE = "APO vs the base RM and its controls, gold-reward task (5 seeds)"
GOOD_GOLDEN = (0.7, 0.95)
# per method: bench/apo_tune.py, validation split
TUNED = {"base_rm": {"update": "dpo", "rm_learning_rate": 1e-3}, "apo": {"update": "dpo", "apo_weight": 0.1}}


def _apo(**overrides):
    c = method("apo", **TUNED["apo"])
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def get_variants():
    return {
        "base_rm": method("base_rm", **TUNED["base_rm"]),
        "apo": _apo(),
        "apo_static": _apo(apo__refresh_adversarial=False),
        "apo_good_golden": _apo(task__golden_quality=GOOD_GOLDEN),
        "apo_w1": _apo(apo__apo_weight=1.0),
        "apo_w1_static": _apo(apo__apo_weight=1.0, apo__refresh_adversarial=False),
    }
