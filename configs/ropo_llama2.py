"""ROPO on Llama-2-7B (real shapes; the paper's base models). Point it at the checkpoint, e.g.

    python -m jaxpref.main --config=configs/ropo_llama2.py --workdir=/ckpt/ropo_llama2 \
        --config.model.hf_dir=/models/Llama-2-7b-hf --config.tokenizer.path=/models/Llama-2-7b-hf --config.data.train_path=/data/pairs.jsonl

Not compiled for a topology yet; its Mistral-7B twin fits v5e:4x4 (BENCHMARKS.md). Check first with
`python -m jaxpref.aot --config=configs/ropo_llama2.py --topology=...`.
"""

from jaxpref.configs_base import ropo_7b_config


def get_config():
    c = ropo_7b_config(hf_dir="/models/Llama-2-7b-hf", tokenizer_path="/models/Llama-2-7b-hf")
    c.model.preset = "llama2_7b"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    return c
