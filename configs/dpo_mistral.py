"""DPO on Mistral-7B-v0.1 (real shapes). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/dpo_mistral.py --workdir=/ckpt/dpo_mistral \
        --config.model.hf_dir=/models/Mistral-7B-v0.1 --config.tokenizer.path=/models/Mistral-7B-v0.1
"""

from jaxpref.configs_base import dpo_7b_config


def get_config():
    return dpo_7b_config(hf_dir="/models/Mistral-7B-v0.1", tokenizer_path="/models/Mistral-7B-v0.1")
