"""Exporting trained params as a complete Hugging Face directory (weights, config, tokenizer, generation config)."""

from __future__ import annotations

import os

import jax

from jaxpref import models as M
from jaxpref.train.runtime import Runtime, host_tree, model_dir


def export_hf(runtime: Runtime, params, out_dir: str) -> str | None:
    """Write ``params`` of ``runtime.model`` to ``out_dir`` (process 0; others return None): a causal LM as
    ``*ForCausalLM``, a reward model as ``*ForSequenceClassification``, with the run's tokenizer files and the
    source checkpoint's config class and generation config when the run started from one."""
    host = host_tree(params)
    if jax.process_index() != 0:
        return None
    tok_dir = getattr(runtime.tokenizer, "path", None)
    kwargs = {}
    if tok_dir and os.path.isdir(tok_dir):
        kwargs["tokenizer_dir"] = tok_dir
    if runtime.cfg.model.hf_dir:
        kwargs["source_dir"] = model_dir(runtime.cfg)
    M.save_pretrained(runtime.model, host, out_dir, **kwargs)
    return out_dir
