"""DPO on the gold-reward task (jaxpref/eval/synthetic.py): SFT a tiny policy, sample pairs, flip labels, train.

    python -m jaxpref.main --config=configs/dpo_synthetic.py --workdir=/tmp/dpo_syn --config.data.flip_rate=0.2
    python -m jaxpref.eval.experiment --config=configs/dpo_synthetic.py --flip_rates=0,0.2,0.4 --seeds=0,1,2 --out=DIR
"""

from jaxpref.configs_base import base_config


def get_config():
    c = base_config()
    c.algorithm = "dpo"
    c.task.name = "gold"  # the task section's defaults (jaxpref/configs_base.py) are this task's settings
    c.tokenizer.path = "int:32"
    c.data.flip_rate = 0.0
    c.data.max_length = 24
    c.data.max_prompt_length = 8
    c.data.buckets = (24,)
    c.data.sort_window = 0
    c.train.pairs_per_batch = 32
    c.train.num_epochs = 4.0
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.1
    c.train.async_checkpointing = False
    c.train.keep_checkpoints = 1
    c.loss.beta = 0.1
    c.mesh.num_devices = 1
    c.export.hf = False
    return c
