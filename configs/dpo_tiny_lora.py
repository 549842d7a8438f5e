"""DPO with LoRA adapters on the tiny random Llama of ``dpo_tiny.py``, on CPU in about a minute.

    python -m jaxpref.main --config=configs/dpo_tiny_lora.py --workdir=/tmp/dpo_tiny_lora

Only the rank-8 adapters on all seven projections train (about 20K of 4.2M parameters); the base is frozen
and, with adapters off, is the reference. ``hf_export/`` gets the merged model, ``hf_adapter/`` the PEFT adapter.
The learning rate is higher than full fine-tuning's, as LoRA's usually is (a starting point for this toy model).
"""

import os

from jaxpref.configs_base import LORA_TARGETS, load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "dpo_tiny.py"))
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.lora.target_modules = LORA_TARGETS
    c.train.learning_rate = 1e-2
    return c
