"""ROPO on Llama-2-7B (real shapes; the paper's base models). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/ropo_llama2.py --workdir=/ckpt/ropo_llama2 \
        --config.model.hf_dir=/models/Llama-2-7b-hf --config.tokenizer.path=/models/Llama-2-7b-hf --config.data.train_path=/data/pairs.jsonl

Compiled with `python -m jaxpref.aot` (training step / sampler, per chip): v5e:4x4 10.39 / 15.27 GiB of 15.75,
v4:2x2x4 15.62 / 4.47 GiB of 30.75, v5p:2x2x2 30.25 / 8.38 GiB of 95.74 (BENCHMARKS.md).
"""

from jaxpref.configs_base import ropo_7b_config


def get_config():
    c = ropo_7b_config(hf_dir="/models/Llama-2-7b-hf", tokenizer_path="/models/Llama-2-7b-hf")
    c.model.preset = "llama2_7b"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    return c
