"""DPO on Mistral-7B-v0.1 (real shapes). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/dpo_mistral.py --workdir=/ckpt/dpo_mistral \
        --config.model.hf_dir=/models/Mistral-7B-v0.1 --config.tokenizer.path=/models/Mistral-7B-v0.1

Compiled with `python -m jaxpref.aot` (training step, per chip): v5e:4x4 14.30 GiB of 15.75, v4:2x2x4
15.38 of 30.75, v5p:2x2x2 30.33 of 95.74 (BENCHMARKS.md).
"""

from jaxpref.configs_base import dpo_7b_config


def get_config():
    c = dpo_7b_config(hf_dir="/models/Mistral-7B-v0.1", tokenizer_path="/models/Mistral-7B-v0.1")
    c.model.preset = "mistral_7b_v01"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    return c
