"""Conversion time and peak host memory of HF -> Flax -> HF on a random ~1.1B Llama checkpoint.

    python bench/convert_1b.py [--workdir /tmp/jaxpref_bench_1b] [--dtype bfloat16]

Step 1 (not measured) writes a random checkpoint with transformers (bf16, 2 GB shards). Steps 2 and 3
each run in a fresh subprocess so ru_maxrss is that step's own peak: HF -> Flax params (numpy, in the
checkpoint dtype) and Flax -> HF (sharded safetensors). One copy of the model is printed for scale.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

STEP = textwrap.dedent("""
    import resource, sys, time, json
    import numpy as np, ml_dtypes
    from jaxpref.models import convert
    src, dst, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    t0 = time.time()
    cfg = convert.load_hf_config(src)
    params = convert.hf_to_flax_params(src, cfg, dtype=dtype)
    t1 = time.time()
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    convert.save_hf_checkpoint(params, cfg, dst, max_shard_bytes=2 * 1024**3)
    t2 = time.time()
    rss_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    n = sum(x.size for x in __import__("jax").tree_util.tree_leaves(params))
    print(json.dumps(dict(params=n, bytes=n * np.dtype(dtype).itemsize, load_s=t1 - t0, save_s=t2 - t1,
                          peak_rss_load_gb=rss_load, peak_rss_total_gb=rss_all)))
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/jaxpref_bench_1b")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    src = os.path.join(args.workdir, "hf")
    if not os.path.exists(os.path.join(src, "config.json")):
        import torch
        import transformers

        from jaxpref.models import preset

        cfg = preset("llama_1b_bench").to_hf_dict("bfloat16")
        hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
        model.save_pretrained(src, max_shard_size="2GB")
        del model
    out = subprocess.run([sys.executable, "-c", STEP, src, os.path.join(args.workdir, "export"), args.dtype],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    files = sorted(os.listdir(src))
    result["checkpoint_files"] = [f for f in files if f.endswith(".safetensors")]
    print(json.dumps(result, indent=2))
    gb = result["bytes"] / 1024**3
    print(f"model {result['params'] / 1e9:.2f}B params = {gb:.2f} GiB in {args.dtype}; "
          f"HF->Flax {result['load_s']:.1f} s, peak RSS {result['peak_rss_load_gb']:.2f} GiB; "
          f"Flax->HF {result['save_s']:.1f} s, peak RSS {result['peak_rss_total_gb']:.2f} GiB")


if __name__ == "__main__":
    main()
