"""DPO with a tiny random Llama on the shipped HH sample, on CPU in about a minute.

    python -m jaxpref.main --config=configs/dpo_tiny.py --workdir=/tmp/dpo_tiny
"""

from jaxpref.configs_base import base_config


def get_config():
    c = base_config()
    c.algorithm = "dpo"
    c.model.preset = "tiny_llama"
    c.model.overrides = {"vocab_size": 32000}  # the Mistral tokenizer's vocabulary
    c.tokenizer.path = "mistral"
    c.data.train_path = "hh"
    c.data.max_rows = 256
    c.data.eval_fraction = 0.125
    c.data.max_length = 192
    c.data.max_prompt_length = 128
    c.data.buckets = (64, 128, 192)
    c.train.pairs_per_batch = 8
    c.train.num_steps = 40
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 4
    c.train.save_every = 20
    c.loss.beta = 0.1
    return c
