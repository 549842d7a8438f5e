"""Llama-family models in Flax, Hugging Face conversion, and a KV-cache sampler.

Public API::

    model, params = jaxpref.models.from_pretrained(hf_dir, dtype=jnp.float32)   # local dir or cached Hub id
    logits = model.apply({"params": params}, input_ids, attention_mask=mask)      # [B, T, V]
    jaxpref.models.save_pretrained(model, params, out_dir, tokenizer_dir=hf_dir)  # complete HF directory out
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.config import PRESETS, ModelConfig, preset
from jaxpref.models.convert import (
    CheckpointError,
    export_hf,
    gguf_to_hf_dir,
    hf_to_flax_params,
    load_hf_config,
    resolve_model_dir,
    save_hf_checkpoint,
)
from jaxpref.models.llama import LlamaForCausalLM, init_params, lm_head_kernel, logical_axes
from jaxpref.models.lora import (
    LoraSettings,
    apply_lora,
    count_params,
    init_lora,
    load_peft_adapter,
    lora_logical_axes,
    merge_lora,
    save_peft_adapter,
)

__all__ = [
    "PRESETS",
    "CheckpointError",
    "LlamaForCausalLM",
    "LoraSettings",
    "apply_lora",
    "count_params",
    "init_lora",
    "load_peft_adapter",
    "lora_logical_axes",
    "merge_lora",
    "save_peft_adapter",
    "ModelConfig",
    "export_hf",
    "from_pretrained",
    "gguf_to_hf_dir",
    "init_params",
    "lm_head_kernel",
    "load_hf_config",
    "logical_axes",
    "preset",
    "resolve_model_dir",
    "save_hf_checkpoint",
    "save_pretrained",
]


def from_pretrained(
    hf_dir: str,
    dtype: Any = jnp.float32,
    *,
    compute_dtype: Any = None,
    remat_policy: str = "none",
) -> tuple[LlamaForCausalLM, dict]:
    """Load a Hugging Face Llama/Mistral checkpoint as ``(model, params)``.

    Args:
      hf_dir: a local directory with ``config.json`` and safetensors (single or sharded) or
        ``pytorch_model.bin``, or a Hub id (``"org/name"``) already in the local Hugging Face cache
        (:func:`resolve_model_dir`; nothing is downloaded).
      dtype: parameter dtype (``jnp.float32`` or ``jnp.bfloat16``).
      compute_dtype: activation dtype; defaults to ``dtype``.
      remat_policy: see :class:`ModelConfig`.
    Raises:
      CheckpointError: a missing directory or uncached Hub id, missing or corrupt files (invalid JSON, a
        truncated safetensors file, a missing shard), an unsupported architecture, or a mis-shaped tensor.
    """
    hf_dir = resolve_model_dir(hf_dir)
    param_dtype = jnp.dtype(dtype).name
    config = load_hf_config(
        hf_dir, dtype=jnp.dtype(compute_dtype or dtype).name, param_dtype=param_dtype, remat_policy=remat_policy
    )
    params = hf_to_flax_params(hf_dir, config, dtype=jnp.dtype(dtype))
    return LlamaForCausalLM(config), jax.tree_util.tree_map(jnp.asarray, params)


def save_pretrained(
    model: LlamaForCausalLM,
    params: dict,
    out_dir: str,
    *,
    dtype: Any = None,
    tokenizer_dir: Any = None,
    source_dir: str | None = None,
    generation_config: Any = None,
    **kwargs,
) -> str:
    """Write ``params`` of ``model`` as a complete Hugging Face directory; returns ``out_dir``.

    A :class:`LlamaForCausalLM` becomes what ``AutoModelForCausalLM.from_pretrained`` loads (weights,
    ``config.json`` by ``LlamaConfig``/``MistralConfig``, tokenizer files, ``generation_config.json``;
    see :func:`jaxpref.models.convert.export_hf`); a :class:`~jaxpref.models.reward.RewardModel` becomes
    a ``*ForSequenceClassification`` directory with a pad id transformers scores correctly
    (:func:`jaxpref.models.reward.save_pretrained`).

    Args:
      model, params: the model and its params (device arrays are copied to the host first).
      out_dir: output directory.
      dtype: stored weight dtype (default: the params' own).
      tokenizer_dir: tokenizer to save with the model (directory, cached Hub id or tokenizer object);
        default ``source_dir``'s when it has one.
      source_dir: the checkpoint the params came from (its ``model_type`` and ``generation_config.json``).
      generation_config: ``GenerationConfig`` or dict (causal LMs only).
      kwargs: ``max_shard_bytes``.
    """
    from jaxpref.models import reward

    if isinstance(model, reward.RewardModel):
        return reward.save_pretrained(model, params, out_dir, dtype=dtype, tokenizer_dir=tokenizer_dir,
                                      source_dir=source_dir, **kwargs)
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    return export_hf(host, model.config, out_dir, dtype=None if dtype is None else jnp.dtype(dtype),
                     tokenizer_dir=tokenizer_dir, source_dir=source_dir, generation_config=generation_config, **kwargs)
