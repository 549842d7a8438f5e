"""ROPO on Mistral-7B-v0.1 (real shapes; the paper's base models). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/ropo_mistral.py --workdir=/ckpt/ropo_mistral \
        --config.model.hf_dir=/models/Mistral-7B-v0.1 --config.tokenizer.path=/models/Mistral-7B-v0.1 --config.data.train_path=/data/pairs.jsonl

Compiled with `python -m jaxpref.aot` (training step / sampler, per chip): v5e:4x4 11.10 / 14.63 GiB of 15.75,
v4:2x2x4 16.73 / 3.43 of 30.75, v5p:2x2x2 31.92 / 6.42 of 95.74 (BENCHMARKS.md).
"""

from jaxpref.configs_base import ropo_7b_config


def get_config():
    c = ropo_7b_config(hf_dir="/models/Mistral-7B-v0.1", tokenizer_path="/models/Mistral-7B-v0.1")
    c.model.preset = "mistral_7b_v01"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    return c
