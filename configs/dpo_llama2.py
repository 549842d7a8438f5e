"""DPO on Llama-2-7B (real shapes). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/dpo_llama2.py --workdir=/ckpt/dpo_llama2 \
        --config.model.hf_dir=/models/Llama-2-7b-hf --config.tokenizer.path=/models/Llama-2-7b-hf

Compiled with `python -m jaxpref.aot` (training step, per chip): v5e:4x4 13.76 GiB of 15.75, v4:2x2x4
16.06 of 30.75, v5p:2x2x2 30.22 of 95.74 (BENCHMARKS.md).
"""

from jaxpref.configs_base import dpo_7b_config


def get_config():
    c = dpo_7b_config(hf_dir="/models/Llama-2-7b-hf", tokenizer_path="/models/Llama-2-7b-hf")
    c.model.preset = "llama2_7b"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    return c
