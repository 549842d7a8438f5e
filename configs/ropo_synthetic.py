"""ROPO on the noisy-label gold-reward task (20% flipped labels by default), in the regime of the paper.

    python -m jaxpref.main --config=configs/ropo_synthetic.py --workdir=/tmp/ropo_syn --config.seed=1
    python -m jaxpref.eval.compare --spec=bench/ropo_table.py --out=docs/results/ropo_table

The task, model and data of the DPO baseline ``configs/dpo_noisy_synthetic.py`` (24-token responses, 8192
pairs, a validation split); two theta-steps of one epoch each (the baseline's 2 epochs) with a w-step between
them that drops the 20% highest-loss pairs and refills their prompts by rejection sampling. The learning rate
was tuned on the validation split with the same grid as every baseline (``bench/ropo_tune.py``).
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_noisy_synthetic.py"))
    c.algorithm = "ropo"
    c.data.flip_rate = 0.2
    c.train.num_epochs = 1.0  # per round: 2 rounds x 1 epoch = the DPO baseline's 2 epochs
    c.ropo.rounds = 2
    c.ropo.filter_ratio = 0.2
    c.ropo.alpha = 14.0
    c.ropo.max_new_tokens = 28  # the ideal response (24 tokens) + EOS, with room for a few extra
    # tuned on the validation split (bench/ropo_tune.py): at beta 0.1 the w-step margins stay where ROPO's loss
    # cannot act
    c.train.learning_rate = 3e-4
    c.loss.beta = 1.0
    return c
