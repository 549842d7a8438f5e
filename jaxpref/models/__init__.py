"""Llama-family models in Flax, Hugging Face conversion, and a KV-cache sampler.

Public API::

    model, params = jaxpref.models.from_pretrained(hf_dir, dtype=jnp.float32)   # local HF directory
    logits = model.apply({"params": params}, input_ids, attention_mask=mask)      # [B, T, V]
    jaxpref.models.save_pretrained(model, params, out_dir)                        # HF directory out
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.config import PRESETS, ModelConfig, preset
from jaxpref.models.convert import (
    CheckpointError,
    gguf_to_hf_dir,
    hf_to_flax_params,
    load_hf_config,
    save_hf_checkpoint,
)
from jaxpref.models.llama import LlamaForCausalLM, init_params, lm_head_kernel, logical_axes

__all__ = [
    "PRESETS",
    "CheckpointError",
    "LlamaForCausalLM",
    "ModelConfig",
    "from_pretrained",
    "gguf_to_hf_dir",
    "init_params",
    "lm_head_kernel",
    "load_hf_config",
    "logical_axes",
    "preset",
    "save_pretrained",
]


def from_pretrained(
    hf_dir: str,
    dtype: Any = jnp.float32,
    *,
    compute_dtype: Any = None,
    remat_policy: str = "none",
) -> tuple[LlamaForCausalLM, dict]:
    """Load a local Hugging Face Llama/Mistral directory as ``(model, params)``.

    Args:
      hf_dir: directory with ``config.json`` and safetensors (single or sharded) or ``pytorch_model.bin``.
      dtype: parameter dtype (``jnp.float32`` or ``jnp.bfloat16``).
      compute_dtype: activation dtype; defaults to ``dtype``.
      remat_policy: see :class:`ModelConfig`.
    Raises:
      CheckpointError: missing files, unsupported architecture, or a mis-shaped tensor (named).
    """
    param_dtype = jnp.dtype(dtype).name
    config = load_hf_config(
        hf_dir, dtype=jnp.dtype(compute_dtype or dtype).name, param_dtype=param_dtype, remat_policy=remat_policy
    )
    params = hf_to_flax_params(hf_dir, config, dtype=jnp.dtype(dtype))
    return LlamaForCausalLM(config), jax.tree_util.tree_map(jnp.asarray, params)


def save_pretrained(model: LlamaForCausalLM, params: dict, out_dir: str, *, dtype: Any = None, **kwargs) -> str:
    """Write ``params`` of ``model`` as a HF directory that ``AutoModelForCausalLM.from_pretrained`` loads
    (a :class:`~jaxpref.models.reward.RewardModel` as ``AutoModelForSequenceClassification``)."""
    from jaxpref.models import reward

    if isinstance(model, reward.RewardModel):
        return reward.save_pretrained(model, params, out_dir, dtype=dtype)
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    return save_hf_checkpoint(host, model.config, out_dir, dtype=None if dtype is None else jnp.dtype(dtype), **kwargs)
