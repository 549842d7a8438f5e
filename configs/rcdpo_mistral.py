"""Reward-conditioned DPO on Mistral-7B-Instruct-v0.3 with the paper's recipe (arXiv 2410.08067, Sec. 5):
TRL-sigmoid DPO, beta 0.01, lr 5e-7 cosine with warmup ratio 0.1, 1 epoch, global batch 128, bf16,
max_length 1024, max_prompt_length 512, seed 42, on scored pairs (UltraFeedback-style score_chosen /
score_rejected on a 1-10 scale). Point it at the checkpoint and data, e.g.

    python -m jaxpref.main --config=configs/rcdpo_mistral.py --workdir=/ckpt/rcdpo_mistral \
        --config.model.hf_dir=/models/Mistral-7B-Instruct-v0.3 --config.tokenizer.path=/models/Mistral-7B-Instruct-v0.3 \
        --config.data.train_path=/data/ultrafeedback_binarized/train.jsonl --config.data.eval_path=/data/ultrafeedback_binarized/test.jsonl

Mistral's chat template has no system role in some versions: ``system_role="auto"`` probes the template
and otherwise prepends the goal and a blank line to the first user turn (the paper's swap is kept).

Compiled with `python -m jaxpref.aot` (training step, per chip): v5e:4x4 13.93 GiB of 15.75, v4:2x2x4 15.42 of
30.75, v5p:2x2x2 30.56 of 95.74 (BENCHMARKS.md).
"""

from jaxpref.configs_base import dpo_7b_config


def get_config():
    c = dpo_7b_config(hf_dir="/models/Mistral-7B-Instruct-v0.3", tokenizer_path="/models/Mistral-7B-Instruct-v0.3")
    c.model.preset = "mistral_7b_instruct_v03"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    c.algorithm = "reward_conditioned"
    c.seed = 42
    c.data.train_path = "/data/ultrafeedback_binarized/train.jsonl"  # scored pairs; a clear error if missing
    c.data.eval_path = ""
    c.data.format = "auto"
    c.train.pairs_per_batch = 16
    c.train.grad_accum_steps = 8  # global batch 128 (16-pair micro-batches fit v5e:4x4; see BENCHMARKS.md)
    c.train.learning_rate = 5e-7
    c.train.schedule = "cosine"
    c.train.warmup_ratio = 0.1
    c.train.num_epochs = 1.0
    c.loss.type = "sigmoid"
    c.loss.beta = 0.01
    c.loss.label_smoothing = 0.0
    c.reward_conditioned.scale_min = 1.0
    c.reward_conditioned.scale_max = 10.0
    c.reward_conditioned.ties = "keep"
    return c
