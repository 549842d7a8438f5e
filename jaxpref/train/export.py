"""Exporting trained params as a complete Hugging Face directory (weights, config, tokenizer, generation config),
and LoRA adapters as a PEFT adapter directory."""

from __future__ import annotations

import os

import jax

from jaxpref import models as M
from jaxpref import paths
from jaxpref.train.runtime import Runtime, host_tree, model_dir


def export_hf(runtime: Runtime, params, out_dir: str) -> str | None:
    """Write ``params`` of ``runtime.model`` to ``out_dir`` (process 0; others return None): a causal LM as
    ``*ForCausalLM``, a reward model as ``*ForSequenceClassification``, with the run's tokenizer files and the
    source checkpoint's config class and generation config when the run started from one. ``params`` are plain
    model params (under LoRA: merged, :meth:`Runtime.merge`)."""
    host = host_tree(params)
    if jax.process_index() != 0:
        return None
    tok_dir = getattr(runtime.tokenizer, "path", None)
    kwargs = {}
    if tok_dir and os.path.isdir(tok_dir):
        kwargs["tokenizer_dir"] = tok_dir
    if runtime.cfg.model.hf_dir:
        kwargs["source_dir"] = model_dir(runtime.cfg)
    with paths.staged_dir(out_dir) as local:  # transformers writes local files; uploaded when out_dir is remote
        M.save_pretrained(runtime.model, host, local, **kwargs)
    return out_dir


def export_adapter(runtime: Runtime, trainable, out_dir: str) -> str | None:
    """Write a LoRA policy's adapters (``trainable["lora"]``) as a PEFT adapter directory (``adapter_config.json``
    + ``adapter_model.safetensors``, :func:`jaxpref.models.lora.save_peft_adapter`) that
    ``peft.PeftModel.from_pretrained`` loads onto the transformers base model; ``base_model_name_or_path`` is the
    run's ``config.model.hf_dir`` when it has one. Process 0 writes; others return None."""
    adapters = host_tree(trainable["lora"])
    if jax.process_index() != 0:
        return None
    base = model_dir(runtime.cfg) if runtime.cfg.model.hf_dir else None
    with paths.staged_dir(out_dir) as local:
        M.save_peft_adapter(adapters, runtime.model.config, runtime.lora, local, base_model_name_or_path=base)
    return out_dir


def export_trained(runtime: Runtime, weights, trainable, out_dir: str, *, adapter_dir: str | None = None) -> dict:
    """The exports of a trained model from its (full or frozen) ``weights`` and train-state ``trainable`` params:
    ``{"hf_export": out_dir}`` -- the model as a HF directory, merged under LoRA -- and, for a LoRA *policy*
    with ``adapter_dir``, ``"hf_adapter": adapter_dir`` (a PEFT adapter; a reward model's export is the merged
    directory only). Paths are None on processes other than 0."""
    out = {"hf_export": export_hf(runtime, runtime.merge(weights, trainable), out_dir)}
    if runtime.lora.enabled and not runtime.adapter_root and adapter_dir:
        out["hf_adapter"] = export_adapter(runtime, trainable, adapter_dir)
    return out
