"""APO on Llama-2-7B (real shapes) with the paper's schedule (arXiv 2311.08045): 3 rounds, policy lr
5e-6 -> 2e-6 -> 9e-7, RM lr 1e-6 for 1 epoch at batch 64 and max length 512, K = 4 samples at temperature 1.2,
256 new tokens, c_rank = 1, c_apo = 0.1. Point it at the SFT checkpoint and HH-style pairs whose rows carry a
golden answer (``golden`` field, e.g. GPT-4 responses), e.g.

    python -m jaxpref.main --config=configs/apo_llama2.py --workdir=/ckpt/apo_llama2 \
        --config.model.hf_dir=/models/Llama-2-7b-sft --config.tokenizer.path=/models/Llama-2-7b-sft \
        --config.data.train_path=/data/hh_with_golden.jsonl --config.data.eval_path=/data/hh_test_with_golden.jsonl

Compiled with `python -m jaxpref.aot` (policy step / reward-model step / sampler, per chip): v5e:4x4
8.87 / 6.68 / 14.54 GiB of 15.75, v4:2x2x4 11.37 / 9.63 / 3.91 of 30.75, v5p:2x2x2 21.54 / 18.19 / 7.31 of 95.74 (BENCHMARKS.md).
"""

from jaxpref.configs_base import dpo_7b_config


def get_config():
    c = dpo_7b_config(hf_dir="/models/Llama-2-7b-sft", tokenizer_path="/models/Llama-2-7b-sft")
    c.model.preset = "llama2_7b"  # the architecture `python -m jaxpref.aot` compiles when hf_dir is not on the host
    c.algorithm = "apo"
    c.reference.mode = "frozen"  # policy samples are new each round: no precomputed reference
    c.data.max_length = 512
    c.data.max_prompt_length = 256
    c.data.buckets = (256, 512)
    c.train.num_epochs = 1.0
    c.reward_model.train.learning_rate = 1e-6
    c.reward_model.train.num_epochs = 1.0
    c.reward_model.train.pairs_per_batch = 16
    c.reward_model.train.grad_accum_steps = 4  # the paper's RM batch of 64 pairs, in micro-batches that fit
    c.model.remat_policy = "full"  # the policy step carries a frozen reference (see ropo_7b_config)
    c.apo.rounds = 3
    c.apo.samples_per_prompt = 4
    c.apo.temperature = 1.2
    c.apo.top_p = 1.0
    c.apo.max_new_tokens = 256
    c.apo.rank_weight = 1.0
    c.apo.apo_weight = 0.1
    c.apo.policy_update = "rejection_sampling"
    c.apo.policy_learning_rates = (5e-6, 2e-6, 9e-7)
    return c
