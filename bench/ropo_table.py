"""Evidence: ROPO against DPO, cDPO and rDPO, and the controls that isolate its parts, on the noisy-label
gold-reward task in the paper's regime (``configs/dpo_noisy_synthetic.py``: 24-token responses, 8192 pairs,
2 epochs), reported on the test split.

    python -m jaxpref.eval.compare --spec=bench/ropo_table.py --out=docs/results/ropo_table

Every variant starts from the same SFT policy and pairs per seed (flipped per flip rate with the same seed).
Learning rates are the ones ``bench/ropo_tune.py`` picked on the validation split, each method from the
same grid (``TUNED``); the controls take ROPO's.

* ``dpo``, ``cdpo``, ``rdpo``: the baselines (cDPO's and rDPO's epsilon = the true flip rate);
* ``ropo``: ``configs/ropo_synthetic.py`` (2 theta-steps of 1 epoch, rho = 0.2, alpha = 14, rejection sampling);
* ``ropo_loss_only``: ROPO's loss on ROPO's schedule without filtering (rho = 0): the noise-tolerance claim;
* ``dpo_ropo_schedule``: the DPO loss on ROPO's schedule without filtering: what the loop alone costs;
* ``ropo_no_rs``: ROPO without rejection sampling (discarded pairs are just dropped);
* ``ropo_dpo_filter``: ROPO with the pairs to discard ranked by their DPO loss instead of ROPO's;
* ``dpo_beta1``: DPO at ROPO's beta = 1 on DPO's own schedule (its grid point lr 1e-3): whether a result is
  ROPO's loss or beta = 1.

What has run (5 seeds each): every arm but ``ropo_dpo_filter`` and ``dpo_beta1`` at 20% flips; DPO and ROPO at 0%
(with epsilon = 0 cDPO is DPO and rDPO is DPO at beta 1); every arm but ``ropo_no_rs`` and
``ropo_dpo_filter`` at 40%. ``ropo_dpo_filter`` has not run. In parts, e.g.:

    python -m jaxpref.eval.compare --spec=bench/ropo_table.py --out=docs/results/ropo_table \
        --flip_rates=0.4 --variants=cdpo,rdpo --task_cache=/tmp/task_cache

``table.md`` lists every (arm, flip rate, seed) not run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ropo_tune import method  # noqa: E402

FLIP_RATES = (0.0, 0.2, 0.4)
SEEDS = (0, 1, 2, 3, 4)
BASELINE = "dpo"
METRICS = ("gold_reward", "win_rate", "clean_accuracy", "kl", "flag_precision", "flag_recall", "flag_auroc")
TITLE = "ROPO vs DPO-family baselines, noisy gold-reward task (5 seeds)"
# (learning rate, beta) per method: bench/ropo_tune.py, validation split
TUNED = {"dpo": (1e-3, 0.1), "cdpo": (1e-3, 0.1), "rdpo": (1e-3, 1.0), "ropo": (3e-4, 1.0)}


def _ropo(rate, **ropo):
    c = method("ropo", rate, *TUNED["ropo"])
    for k, v in ropo.items():
        c.ropo[k] = v
    return c


def get_variants():
    out = {name: (lambda rate, name=name: method(name, rate, *TUNED[name])) for name in ("dpo", "cdpo", "rdpo", "ropo")}
    out["ropo_loss_only"] = lambda rate: _ropo(rate, filter_ratio=0.0, rejection_sampling=False)
    out["dpo_ropo_schedule"] = lambda rate: _ropo(rate, filter_ratio=0.0, rejection_sampling=False, train_loss="dpo",
                                                  filter_loss="dpo")
    out["ropo_no_rs"] = lambda rate: _ropo(rate, rejection_sampling=False)
    out["ropo_dpo_filter"] = lambda rate: _ropo(rate, filter_loss="dpo")
    # DPO at ROPO's beta (its own grid point lr 1e-3, beta 1, DPO's schedule): is a result ROPO's loss, or beta = 1?
    out["dpo_beta1"] = lambda rate: method("dpo", rate, 1e-3, 1.0)
    return out
