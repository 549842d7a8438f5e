"""jaxpref's DPO step vs TRL's DPOTrainer on identical work, one invocation, same machine.

    python bench/dpo_vs_trl.py [--pairs 160] [--threads 2] [--repeats 3] [--sides jaxpref,trl,jaxpref_lora,trl_peft]

Work (both sides): a random-init Llama (vocab 32000, hidden 256, intermediate 704, 4 layers, 8 heads,
4 KV heads, untied), the same HH pairs (Mistral tokenizer, max_length 256 keep-start truncation, no
prompt truncation -- TRL 1.16's semantics), sigmoid loss beta 0.1, a reference forward every step, 8
pairs per step, fp32, AdamW. Each side runs in its own subprocess (so peak RSS is its own) over the
same pairs (``--pairs``, a multiple of 8) for one epoch.

Reported per side: steady-state s/step (median over steps whose shapes were already compiled),
pairs/s, real (unpadded) tokens/s, compile time (jaxpref: the extra time of steps that compiled a new
shape), peak RSS, and MFU = useful FLOPs / time / 168 GFLOP/s (this machine's measured fp32 matmul
peak). Useful FLOPs per step = 8 x (body params x real tokens + LM-head params x response tokens): 6x
for the policy forward+backward, 2x for the reference forward, counting only work the loss needs.
Sides ``jaxpref_lora`` and ``trl_peft`` train rank-16 LoRA adapters on all seven projections (alpha 32, no
dropout) with the adapter-free base as the reference (TRL through PEFT); their MFU counts 6x instead of 8x
(no weight gradient for the frozen base). Each side runs ``--repeats`` times, the order of the sides reversed
on every other repeat (so drift on a noisy machine hits all sides alike); reported: the median and [min, max]
per side, and the per-repeat pairs/s ratios of jaxpref vs TRL (full, and LoRA vs PEFT) with their median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PEAK_FLOPS = 168e9  # measured XLA fp32 matmul peak of the 2-core dev machine (a large square matmul)
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = dict(vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=1024)


def load_pairs(n_pairs: int):
    """The first pairs of the shipped HH sample that survive tokenization, and their real token counts."""
    from jaxpref import data as D

    rows = D.load_preferences(D.SHIPPED_HH, skip_invalid=True, max_rows=n_pairs + 64)
    tok = D.load_tokenizer("mistral")
    pairs = D.tokenize_dataset(rows, tok, D.TokenizeOptions(max_length=256, max_prompt_length=None), skip_invalid=True,
                               progress=False)[:n_pairs]
    keep = {p.id for p in pairs}
    rows = [r for r in rows if r["id"] in keep]
    real = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    resp = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return rows, pairs, real, resp, tok


def flops_per_pair_set(real_tokens: int, response_tokens: int) -> float:
    d, f, v, layers = MODEL["hidden_size"], MODEL["intermediate_size"], MODEL["vocab_size"], MODEL["num_hidden_layers"]
    hd = d // MODEL["num_attention_heads"]
    attn = d * hd * (MODEL["num_attention_heads"] + 2 * MODEL["num_key_value_heads"]) + MODEL["num_attention_heads"] * hd * d
    body = layers * (attn + 3 * d * f)
    return 8.0 * (body * real_tokens + d * v * response_tokens)


LORA = dict(rank=16, alpha=32.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
SIDES = ("jaxpref", "trl", "jaxpref_lora", "trl_peft")


def bench_trainer(n_pairs: int, lora: bool):
    """``(Trainer, (real tokens, response tokens))`` of the benchmark run: the model, pairs and settings above."""
    sys.path.insert(0, os.path.dirname(HERE))
    import tempfile

    from jaxpref.configs_base import base_config
    from jaxpref.train import Runtime, Trainer

    rows, pairs, real, resp, tok = load_pairs(n_pairs)
    c = base_config()
    c.model.preset = "bench_32k"
    c.tokenizer.path = "mistral"
    c.data.max_length = 256
    c.data.max_prompt_length = None
    c.data.buckets = (64, 128, 192, 256)
    c.train.pairs_per_batch = 8
    c.train.num_steps = n_pairs // 8
    c.train.learning_rate = 1e-5
    c.train.warmup_steps = 0
    c.train.async_checkpointing = False
    c.train.save_every = 10**6
    c.mesh.num_devices = 1
    c.export.hf = False
    if lora:
        c.lora.rank, c.lora.alpha, c.lora.target_modules = LORA["rank"], LORA["alpha"], LORA["targets"]
    runtime = Runtime.build(c)
    trainer = Trainer(runtime, tempfile.mkdtemp(prefix="bench_dpo_"), rows, params=runtime.initial_params(),
                      progress=False)
    return trainer, (real, resp)


def run_jaxpref(n_pairs: int, lora: bool) -> dict:
    trainer, (real, resp) = bench_trainer(n_pairs, lora)
    shapes = []
    for ix in trainer.batcher.epoch_plan(0):
        b = trainer.batcher.make_batch(ix)
        shapes.append((b["input_ids"].shape, b["score_index"].shape))
    times = []
    t_all = time.perf_counter()
    trainer.fit(on_step=lambda step, m: times.append(m["step_time_s"]), resume=False)
    total = time.perf_counter() - t_all
    trainer.close()
    seen, steady, compile_s = set(), [], 0.0
    for shape, t in zip(shapes, times):
        if shape in seen:
            steady.append(t)
        else:
            seen.add(shape)
            compile_s += t
    med = statistics.median(steady)
    compile_s -= med * len(seen)  # the compile overhead beyond a normal step
    return dict(steps=len(times), s_per_step=med, total_s=total, compile_s=compile_s, programs=len(seen),
                real_tokens=real, response_tokens=resp, **trainer.runtime.param_counts())


def run_trl(n_pairs: int, threads: int, lora: bool) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.dirname(HERE))
    rows, pairs, real, resp, tok = load_pairs(n_pairs)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**MODEL, rms_norm_eps=1e-5)
    model = transformers.LlamaForCausalLM(cfg)
    total_params = sum(p.numel() for p in model.parameters())
    peft_config, ref = None, None
    if lora:  # TRL's reference is then the same model with the adapters disabled (no second copy)
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                 target_modules=list(LORA["targets"]), task_type="CAUSAL_LM")
    else:
        ref = transformers.LlamaForCausalLM(cfg)
        ref.load_state_dict(model.state_dict())
    hf_tok = tok.tok
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    import tempfile

    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=8, max_length=256,
                     beta=0.1, loss_type=["sigmoid"], learning_rate=1e-5, num_train_epochs=1, logging_steps=1000,
                     save_strategy="no", report_to=[], bf16=False, fp16=False, use_cpu=True, seed=0,
                     precompute_ref_log_probs=False, dataloader_num_workers=0, disable_tqdm=True)
    times = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=hf_tok,
                         callbacks=[Timer()], peft_config=peft_config)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    t_all = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t_all
    med = statistics.median(times[1:])
    return dict(steps=len(times), s_per_step=med, total_s=total, compile_s=0.0, programs=0, real_tokens=real,
                response_tokens=resp, trainable_params=trainable, total_params=total_params + (trainable if lora else 0))


def child(side: str, n_pairs: int, threads: int) -> None:
    import resource

    lora = side.endswith(("_lora", "_peft"))
    out = run_jaxpref(n_pairs, lora) if side.startswith("jaxpref") else run_trl(n_pairs, threads, lora)
    out["side"] = side
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(out))


def run_side(side: str, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, __file__, "--child", side, "--pairs", str(args.pairs), "--threads",
                          str(args.threads)], capture_output=True, text=True, env=env)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not line:
        raise SystemExit(f"{side} failed:\n{out.stderr[-4000:]}")
    r = json.loads(line[-1][len("RESULT "):])
    steps = args.pairs // 8
    r["pairs_per_s"] = 8 / r["s_per_step"]
    r["tokens_per_s"] = r["real_tokens"] / steps / r["s_per_step"]
    # LoRA: no weight gradients for the frozen base (4x instead of 6x for the policy, + 2x reference)
    factor = 6.0 / 8.0 if side.endswith(("_lora", "_peft")) else 1.0
    r["mfu"] = factor * flops_per_pair_set(r["real_tokens"], r["response_tokens"]) / steps / r["s_per_step"] / PEAK_FLOPS
    return r


def _spread(values) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="paired runs; the side order alternates between them")
    ap.add_argument("--sides", default="jaxpref,trl", help=f"comma-separated, from {','.join(SIDES)}")
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pairs, args.threads)
        return
    sides = args.sides.split(",")
    if set(sides) - set(SIDES) or args.pairs % 8:
        raise SystemExit(f"--sides must name some of {SIDES}; --pairs must be a multiple of 8")
    runs = {side: [] for side in sides}
    for rep in range(args.repeats):
        order = sides if rep % 2 == 0 else sides[::-1]  # ABBA...: drift on the machine hits both sides alike
        for side in order:
            r = run_side(side, args)
            runs[side].append(r)
            print(f"repeat {rep + 1}/{args.repeats} {side:13} {r['s_per_step']:6.2f} s/step {r['pairs_per_s']:5.2f} "
                  f"pairs/s peak RSS {r['peak_rss_gb']:.2f} GiB", flush=True)
    print(f"\n{'side':13} {'s/step':>20} {'pairs/s':>20} {'tokens/s':>9} {'compile s':>9} {'peak RSS GiB':>12} "
          f"{'MFU':>6} {'trainable / total params':>26}   (median [min, max] of {args.repeats})")
    for side, rs in runs.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"{side:13} {_spread([r['s_per_step'] for r in rs]):>20} {_spread([r['pairs_per_s'] for r in rs]):>20} "
              f"{med('tokens_per_s'):9.0f} {med('compile_s'):9.1f} {med('peak_rss_gb'):12.2f} {100 * med('mfu'):5.1f}% "
              f"{rs[0]['trainable_params']:>12,} / {rs[0]['total_params']:,}")
    print(json.dumps(runs))
    pairs = [(a, b) for a, b in (("jaxpref", "trl"), ("jaxpref_lora", "trl_peft"), ("jaxpref_lora", "jaxpref"))
             if a in runs and b in runs]
    for a, b in pairs:
        ratios = [x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(runs[a], runs[b])]
        print(f"{a} vs {b}: pairs/s ratio per paired run {[round(x, 2) for x in ratios]}, median {_spread(ratios)}")


if __name__ == "__main__":
    main()
