"""Command-line checkpoint conversion.

    python -m jaxpref.convert hf-to-flax --src HF_DIR --dst PARAMS_DIR   # orbax PyTree checkpoint
    python -m jaxpref.convert flax-to-hf --src PARAMS_DIR --config HF_DIR_OR_CONFIG_JSON --dst HF_DIR
    python -m jaxpref.convert gguf-to-hf --src MODEL.gguf --dst HF_DIR
    python -m jaxpref.convert roundtrip --src HF_DIR --dst HF_DIR      # HF -> Flax -> HF (a check)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpref.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["hf-to-flax", "flax-to-hf", "gguf-to-hf", "roundtrip"])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--config", help="flax-to-hf: HF directory or config.json describing the model")
    parser.add_argument("--dtype", default=None, help="stored dtype: float32 or bfloat16 (default: as read)")
    args = parser.parse_args(argv)

    import numpy as np

    from jaxpref.models import convert as C
    from jaxpref.models.config import ModelConfig

    dtype = None if args.dtype is None else np.dtype(__import__("ml_dtypes").bfloat16 if args.dtype == "bfloat16"
                                                     else args.dtype)
    start = time.time()
    try:
        if args.command == "gguf-to-hf":
            C.gguf_to_hf_dir(args.src, args.dst)
        elif args.command in ("hf-to-flax", "roundtrip"):
            cfg = C.load_hf_config(args.src)
            params = C.hf_to_flax_params(args.src, cfg, dtype=dtype or np.float32)
            if args.command == "roundtrip":
                C.save_hf_checkpoint(params, cfg, args.dst, dtype=dtype)
            else:
                import orbax.checkpoint as ocp

                ocp.PyTreeCheckpointer().save(os.path.abspath(os.path.join(args.dst, "params")), params, force=True)
                with open(os.path.join(args.dst, "config.json"), "w") as f:
                    json.dump(cfg.to_hf_dict(), f, indent=2)
        else:
            import orbax.checkpoint as ocp

            config_path = args.config or os.path.join(args.src, "config.json")
            if os.path.isdir(config_path):
                config_path = os.path.join(config_path, "config.json")
            with open(config_path) as f:
                cfg = ModelConfig.from_hf_dict(json.load(f))
            params = ocp.PyTreeCheckpointer().restore(os.path.abspath(os.path.join(args.src, "params")))
            C.save_hf_checkpoint(params, cfg, args.dst, dtype=dtype)
    except (C.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.command}: {args.src} -> {args.dst} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
