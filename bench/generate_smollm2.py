"""Greedy generation throughput on the real SmolLM2-135M-Instruct: jaxpref's jit KV-cache sampler vs
transformers' ``generate`` (PyTorch, CPU), same prompts, same machine, one run.

    python bench/generate_smollm2.py [--batch 8] [--new-tokens 64] [--threads 2]

Tokens/s counts generated tokens (batch x new tokens; EOS disabled so both sides generate the same
number). jaxpref's compile time is reported separately and excluded from steady state; each side's
time is the median of 3 timed runs after one warm-up.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}")

    import jax
    import torch
    import transformers

    from hf_fixtures import smollm2_hf_dir
    from jaxpref import models
    from jaxpref.models.generate import generate, left_pad

    torch.set_num_threads(args.threads)
    path = smollm2_hf_dir()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    base = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "Water boils at",
            "The best way to learn", "In 1905, Einstein", "A haiku about autumn:", "SELECT name FROM"]
    prompts = [tok(base[i % len(base)])["input_ids"] for i in range(args.batch)]
    ids, mask = left_pad(prompts, pad_token_id=tok.pad_token_id)
    n_tokens = args.batch * args.new_tokens

    model, params = models.from_pretrained(path)
    t = time.perf_counter()
    jax.block_until_ready(generate(model, params, ids, mask, max_new_tokens=args.new_tokens, greedy=True,
                                   eos_token_id=()))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(generate(model, params, ids, mask, max_new_tokens=args.new_tokens, greedy=True,
                                       eos_token_id=()))
        times.append(time.perf_counter() - t)
    ours = statistics.median(times)

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        hf.generate(**kwargs)
        hf_times = []
        for _ in range(3):
            t = time.perf_counter()
            hf.generate(**kwargs)
            hf_times.append(time.perf_counter() - t)
    theirs = statistics.median(hf_times)
    print(f"batch {args.batch}, {args.new_tokens} new tokens, prompt length {ids.shape[1]}, threads {args.threads}")
    print(f"jaxpref compile+first run {compile_s:.1f} s; steady {ours:.2f} s")
    print(f"jaxpref {n_tokens / ours:.1f} tokens/s, transformers {n_tokens / theirs:.1f} tokens/s, "
          f"ratio {theirs / ours:.2f}")


if __name__ == "__main__":
    main()
