"""DPO on Mistral-7B-v0.1 (real shapes). Set the checkpoint directory, e.g.

    python -m jaxpref.main --config=configs/dpo_mistral.py --workdir=/ckpt/dpo_mistral \
        --config.model.hf_dir=/models/Mistral-7B-v0.1 --config.tokenizer.path=/models/Mistral-7B-v0.1
"""

from jaxpref.configs_base import base_config


def get_config():
    c = base_config()
    c.algorithm = "dpo"
    c.model.hf_dir = "/models/Mistral-7B-v0.1"  # a local HF directory; a clear error if missing
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat_policy = "dots_with_no_batch_dims"
    c.tokenizer.path = "/models/Mistral-7B-v0.1"
    c.data.train_path = "hh"
    c.data.max_length = 1024
    c.data.max_prompt_length = 512
    c.data.buckets = (256, 512, 768, 1024)
    c.train.pairs_per_batch = 64
    c.train.grad_accum_steps = 2
    c.train.num_epochs = 1.0
    c.train.learning_rate = 5e-7
    c.train.warmup_ratio = 0.1
    c.train.save_every = 200
    c.loss.beta = 0.1
    c.reference.mode = "cached"
    c.mesh.fsdp = -1
    return c
