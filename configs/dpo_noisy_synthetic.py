"""DPO on the noisy-label gold-reward task in the regime of the ROPO paper (the ROPO table's baseline).

    python -m jaxpref.main --config=configs/dpo_noisy_synthetic.py --workdir=/tmp/dpo_noisy --config.data.flip_rate=0.2
    python -m jaxpref.eval.compare --spec=bench/ropo_table.py --out=docs/results/ropo_table

The task of ``configs/dpo_synthetic.py`` made large enough that a tiny policy cannot memorise it: prompts and
ideal responses of 24 tokens (so sequence log-ratios reach the range where DPO's and ROPO's losses differ),
8192 training pairs seen for at most 2 epochs, and a validation split (256 prompts and clean pairs) apart from
the 256 test prompts. Tune on ``--config.task.eval_split=validation``; the learning rate here was tuned that way
(``bench/ropo_tune.py``, BENCHMARKS.md).
"""

import os

from jaxpref.configs_base import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_synthetic.py"))
    c.task.prompt_length = 24
    c.task.num_pair_prompts = 8192
    c.task.num_val_prompts = 256
    c.data.max_length = 64  # BOS + 24 prompt tokens + at most 28 sampled response tokens
    c.data.max_prompt_length = 26
    c.data.buckets = (64,)
    c.train.pairs_per_batch = 64
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-3
    return c
