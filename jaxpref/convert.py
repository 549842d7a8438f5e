"""Command-line checkpoint conversion.

    python -m jaxpref.convert hf-to-flax --src HF_DIR_OR_HUB_ID --dst DIR      # orbax params + config.json
    python -m jaxpref.convert flax-to-hf --src DIR --dst HF_DIR                 # DIR written by hf-to-flax
    python -m jaxpref.convert flax-to-hf --src WORKDIR/checkpoints/STEP --dst HF_DIR [--config-dir HF_DIR]
    python -m jaxpref.convert flax-to-hf --src WORKDIR [--step N] --dst HF_DIR [--config-dir HF_DIR]
    python -m jaxpref.convert gguf-to-hf --src MODEL.gguf --dst HF_DIR
    python -m jaxpref.convert roundtrip --src HF_DIR --dst HF_DIR              # HF -> Flax -> HF (a check)

flax-to-hf from a training run reads only ``state.params`` of the orbax checkpoint (``--step``, default the
step named in ``--src``, else the latest; ``--part policy|rm`` for APO's combined checkpoints). The params do
not say which architecture they belong to, so the model config comes from ``--config-dir`` (a HF directory
with ``config.json``, normally the model the run started from, or the config.json file itself), else from
``WORKDIR/hf_export/config.json`` when the run finished and exported. The tokenizer is ``--tokenizer-dir``,
else the config directory's, else ``WORKDIR/hf_export``'s; ``generation_config.json`` and the config class
(Llama or Mistral) come from the config directory. A reward-model checkpoint (params ``backbone`` +
``score``) exports as ``*ForSequenceClassification``. A LoRA run's checkpoint (adapters only) is merged onto
the base the run started from, rebuilt from ``WORKDIR/config.json`` (``model.hf_dir`` or the preset's seeded
init), and exported with the PEFT adapter in ``HF_DIR/adapter/`` (policy runs on your own data).

Errors in the input (missing or corrupt files, a config that does not fit the params) print one ``error:``
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _dtype(name: str | None):
    import ml_dtypes
    import numpy as np

    if name is None:
        return None
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _config_dir(args, workdir: str | None) -> str:
    """The directory of the config.json describing the params (see the module docstring)."""
    from jaxpref.models import convert as C

    if args.config_dir:
        path = os.path.expanduser(args.config_dir)
        if os.path.isfile(path):  # a config.json file given directly
            return os.path.dirname(os.path.abspath(path))
        return C.resolve_model_dir(path)
    candidates = [args.src] if workdir is None else [os.path.join(workdir, "hf_export")]
    for d in candidates:
        if os.path.isfile(os.path.join(d, "config.json")):
            return d
    raise C.CheckpointError(f"No model config for {args.src}: pass --config-dir HF_DIR (the model the run started "
                            f"from){'' if workdir is None else f'; {workdir}/hf_export/config.json does not exist'}.")


def _workdir_of(step_dir: str) -> str:
    """``WORKDIR`` of ``WORKDIR/checkpoints/<step>``."""
    return os.path.dirname(os.path.dirname(step_dir))


def flax_to_hf(args) -> str:
    """The flax-to-hf command; returns the output directory."""
    from jaxpref.models import convert as C
    from jaxpref.models import reward as R

    legacy = os.path.isdir(os.path.join(args.src, "params"))  # written by hf-to-flax
    if legacy:
        import orbax.checkpoint as ocp

        workdir = None
        try:
            params = ocp.PyTreeCheckpointer().restore(os.path.abspath(os.path.join(args.src, "params")))
        except Exception as e:
            raise C.CheckpointError(f"{args.src}/params: orbax cannot restore it ({type(e).__name__}); the "
                                    "checkpoint is incomplete or corrupt.") from None
    else:
        step_dir = C.train_checkpoint_step_dir(args.src, args.step)
        workdir = _workdir_of(step_dir)
        params = C.read_train_checkpoint_params(step_dir, args.part)
        if "lora" in params:
            return _export_lora_step(args, workdir, params)
    config_dir = _config_dir(args, workdir)
    cfg = C.load_hf_config(config_dir)
    tokenizer = args.tokenizer_dir
    if tokenizer is None:
        for d in [config_dir] + ([] if workdir is None else [os.path.join(workdir, "hf_export")]):
            if C.has_tokenizer(d):
                tokenizer = d
                break
    if tokenizer is None:
        print(f"note: no tokenizer found in {config_dir}; the export has none (pass --tokenizer-dir)", file=sys.stderr)
    dtype = _dtype(args.dtype)
    if set(params) == {"backbone", "score"}:
        model = R.RewardModel(cfg)
        return R.save_pretrained(model, params, args.dst, dtype=dtype, tokenizer_dir=tokenizer, source_dir=config_dir)
    return C.export_hf(params, cfg, args.dst, dtype=dtype, tokenizer_dir=tokenizer, source_dir=config_dir)


def _run_config(workdir: str):
    """The resolved config a run was started with (``WORKDIR/config.json``) as a ConfigDict."""
    import json

    import ml_collections

    from jaxpref.configs_base import CONFIG_FILE, base_config
    from jaxpref.models import convert as C

    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as e:
        raise C.CheckpointError(f"{path}: the run's config is needed to export a LoRA checkpoint and cannot be read "
                                f"({e}).") from None

    def restore(template, value):  # JSON lists back to the schema's tuples
        if isinstance(template, ml_collections.ConfigDict) and isinstance(value, dict):
            out = ml_collections.ConfigDict(dict(template), type_safe=False)
            for k, v in value.items():
                out[k] = restore(template[k], v) if k in template else v
            return out
        return tuple(value) if isinstance(template, tuple) and isinstance(value, list) else value

    cfg = restore(base_config(), stored)
    return cfg


def _export_lora_step(args, workdir: str, trainable: dict) -> str:
    """flax-to-hf of a LoRA checkpoint (adapters, and any trained head): the base is rebuilt as the run built it --
    ``model.hf_dir``'s weights, or the preset's seeded init -- and the merged model is exported with the run's
    tokenizer; ``--dst`` also receives the PEFT adapter under ``adapter/``."""
    import jax

    from jaxpref.errors import UserError
    from jaxpref.train.export import export_adapter, export_hf
    from jaxpref.train.runtime import Runtime

    if args.dtype or args.tokenizer_dir:
        raise UserError("--dtype and --tokenizer-dir do not apply to a LoRA checkpoint: it is merged onto the run's "
                        "own base and exported with the run's tokenizer; leave them out.")
    if not os.path.isfile(os.path.join(workdir, "config.json")) and os.path.isfile(
            os.path.join(os.path.dirname(workdir), "config.json")):
        workdir = os.path.dirname(workdir)  # a ROPO round's checkpoints: WORKDIR/round_r/checkpoints/<step>
    cfg = _run_config(workdir)
    if cfg.algorithm in ("apo", "reward_model") or cfg.task.name not in ("",):
        raise UserError(f"{workdir}: exporting a LoRA checkpoint step is supported for policy runs on your own data "
                        f"(this run: algorithm {cfg.algorithm!r}, task {cfg.task.name!r}, whose base is not rebuilt "
                        "from the config); use the run's final hf_export/ and hf_adapter/.")
    cfg.mesh.num_devices = 1
    runtime = Runtime.build(cfg, devices=jax.devices()[:1])
    merged = runtime.merge(runtime.initial_params(), trainable)
    out = export_hf(runtime, merged, args.dst)
    export_adapter(runtime, trainable, os.path.join(args.dst, "adapter"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpref.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["hf-to-flax", "flax-to-hf", "gguf-to-hf", "roundtrip"])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--config-dir", "--config", dest="config_dir",
                        help="flax-to-hf: HF directory (or its config.json) describing the model")
    parser.add_argument("--tokenizer-dir", help="flax-to-hf: tokenizer to save with the export")
    parser.add_argument("--step", type=int, help="flax-to-hf: training step to export (default: the latest)")
    parser.add_argument("--part", help="flax-to-hf: which state of a combined checkpoint (APO: policy or rm)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="stored dtype (default: as read)")
    args = parser.parse_args(argv)

    from jaxpref.errors import EXIT_USER_ERROR, UserError
    from jaxpref.models import convert as C

    dtype = _dtype(args.dtype)
    start = time.time()
    try:
        if args.command == "gguf-to-hf":
            C.gguf_to_hf_dir(args.src, args.dst)
        elif args.command == "roundtrip":
            src = C.resolve_model_dir(args.src)
            cfg = C.load_hf_config(src)
            params = C.hf_to_flax_params(src, cfg, dtype=dtype or "float32")
            C.export_hf(params, cfg, args.dst, dtype=dtype, source_dir=src)
        elif args.command == "hf-to-flax":
            import numpy as np
            import orbax.checkpoint as ocp

            src = C.resolve_model_dir(args.src)
            cfg = C.load_hf_config(src)
            params = C.hf_to_flax_params(src, cfg, dtype=dtype or np.float32)
            ocp.PyTreeCheckpointer().save(os.path.abspath(os.path.join(args.dst, "params")), params, force=True)
            C.hf_config(cfg, dtype=C.hf_dtype_name(dtype or np.float32)).save_pretrained(args.dst)
            if C.has_tokenizer(src):  # so that flax-to-hf of this directory gives a complete export
                C.load_export_tokenizer(src).save_pretrained(args.dst)
        else:
            flax_to_hf(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"{args.command}: {args.src} -> {args.dst} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
