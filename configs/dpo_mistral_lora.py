"""DPO with LoRA on Mistral-7B-v0.1 (real shapes): rank 16, alpha 32, adapters on all seven projections.

    python -m jaxpref.main --config=configs/dpo_mistral_lora.py --workdir=/ckpt/dpo_mistral_lora \
        --config.model.hf_dir=/models/Mistral-7B-v0.1 --config.tokenizer.path=/models/Mistral-7B-v0.1

Only the adapters train: 41,943,040 parameters (r * (d_in + d_out) summed over q, k, v, o, gate, up and down
of 32 layers) against the base's 7,241,732,096, i.e. 0.58%. The train state -- adapters and their two
AdamW moments -- is float32 and tiny; checkpoints hold only it (and the data position).

Frozen base in bfloat16 (``model.param_dtype = "bfloat16"``). The full fine-tuning recipes keep float32
master weights because AdamW's updates at lr 5e-7 are below half a bf16 ulp of most weights and would be
lost. Here the base is never updated, so storing it in bf16 loses nothing of the training signal and halves
its memory (14.5 GB instead of 29 GB, one copy: with adapters off the same weights are the DPO reference);
the adapters keep float32 masters whatever the base's dtype.

Learning rate 5e-6 (cosine, 10% warmup) is a starting point, not tuned here: LoRA updates a low-rank
correction scaled by alpha/r, and published LoRA-DPO recipes for 7B models use 5e-6 .. 1e-5 -- ten times and
more the 5e-7 of full-parameter DPO (e.g. Hugging Face's alignment-handbook trains Zephyr-7B with QLoRA DPO at
5e-6, r 16 on all seven projections, dropout 0.05). Any 7B config takes LoRA from the command line too:
``--config.lora.rank=16 --config.train.learning_rate=5e-6``.

Compiled with `python -m jaxpref.aot` (training step, per chip): v5e:4x4 15.27 GiB of 15.75, v4:2x2x4 22.10 of
30.75, v5p:2x2x2 42.62 of 95.74 (BENCHMARKS.md). Under the ``dots_with_no_batch_dims`` remat policy the adapters'
matmul outputs are saved too, so LoRA's activations exceed full fine-tuning's; with less memory, use
``--config.model.remat_policy=full``.

``hf_export/`` receives the merged model (a plain Mistral checkpoint) and ``hf_adapter/`` the PEFT adapter
(``peft.PeftModel.from_pretrained(base, ".../hf_adapter")``; its ``base_model_name_or_path`` is ``model.hf_dir``).
"""

from jaxpref.configs_base import LORA_TARGETS, dpo_7b_config


def get_config():
    c = dpo_7b_config(hf_dir="/models/Mistral-7B-v0.1", tokenizer_path="/models/Mistral-7B-v0.1")
    c.model.preset = "mistral_7b_v01"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    c.model.param_dtype = "bfloat16"  # the frozen base; the adapters stay float32 (see above)
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.05
    c.lora.target_modules = LORA_TARGETS  # q, k, v, o, gate, up, down
    c.train.learning_rate = 5e-6
    return c
