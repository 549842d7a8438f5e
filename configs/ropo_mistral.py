"""ROPO on Mistral-7B-v0.1 (real shapes; the paper's base models). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/ropo_mistral.py --workdir=/ckpt/ropo_mistral \
        --config.model.hf_dir=/models/Mistral-7B-v0.1 --config.tokenizer.path=/models/Mistral-7B-v0.1 --config.data.train_path=/data/pairs.jsonl
"""

from jaxpref.configs_base import ropo_7b_config


def get_config():
    return ropo_7b_config(hf_dir="/models/Mistral-7B-v0.1", tokenizer_path="/models/Mistral-7B-v0.1")
