"""A scalar-head reward model on the Llama/Mistral decoder, and its Hugging Face conversion.

``RewardModel(config)(input_ids, attention_mask, positions, segment_ids) -> [B, T]`` per-token scores
``s_t = h_t . w`` (``h`` the final normed hidden states, ``w`` the ``score`` head ``[D, 1]``, no bias).
A sequence's reward is the score at its **last response token** (:func:`sequence_rewards`), found from the
batch's response mask -- never inferred from pad ids, so padding, packing and pad == EOS tokenizers are
all safe.

Parameters are ``{"backbone": <LlamaForCausalLM params without lm_head>, "score": {"kernel": [D, 1]}}``.
On disk a reward model is a Hugging Face ``LlamaForSequenceClassification`` / ``MistralForSequenceClassification``
directory (``model.*`` tensors + ``score.weight [1, D]``, ``num_labels = 1``), which transformers loads with
identical scores (tested).
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.config import ModelConfig
from jaxpref.models.llama import LlamaForCausalLM, _init

ARCHITECTURES = {"llama": "LlamaForSequenceClassification", "mistral": "MistralForSequenceClassification"}


class RewardModel(nn.Module):
    """The decoder with a scalar head; returns per-token scores ``[B, T]`` (float32)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None, segment_ids=None):
        hidden = LlamaForCausalLM(self.config, name="backbone")(
            input_ids, attention_mask=attention_mask, positions=positions, segment_ids=segment_ids, return_hidden=True)
        kernel = self.param("score", _init(("embed", None)), (self.config.hidden_size, 1),
                            jnp.dtype(self.config.param_dtype))
        return jnp.einsum("btd,dk->btk", hidden.astype(jnp.float32), kernel.astype(jnp.float32))[..., 0]


def last_response_token_mask(loss_mask, sequence_ids):
    """``[R, L]`` 1 at the last response token of every sequence: response tokens (``loss_mask``) whose next
    position is not a response token of the same sequence."""
    lm = jnp.asarray(loss_mask)
    seq = jnp.asarray(sequence_ids)
    next_lm = jnp.concatenate([lm[:, 1:], jnp.zeros_like(lm[:, :1])], axis=1)
    next_seq = jnp.concatenate([seq[:, 1:], jnp.full_like(seq[:, :1], -1)], axis=1)
    return (lm > 0) & ((next_lm == 0) | (next_seq != seq))


def sequence_rewards(params, model: RewardModel, batch: dict, *, vocab_chunk: int | None = None):
    """Rewards ``(chosen [P], rejected [P])`` of a preference batch (:mod:`jaxpref.data.batching` layout): each
    sequence's score at its last response token. Same signature as :func:`jaxpref.train.step.sequence_logps`."""
    from jaxpref.data.batching import sequence_sums

    del vocab_chunk
    scores = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
                         positions=batch["positions"], segment_ids=batch["segment_ids"])
    end = last_response_token_mask(batch["loss_mask"], batch["sequence_ids"]).astype(scores.dtype)
    return sequence_sums(scores, end, batch["sequence_ids"], batch["pair_weight"].shape[0])


def from_causal_lm(lm_params: dict, config: ModelConfig, *, seed: int = 0) -> dict:
    """Reward-model params from a causal LM's: the decoder as the backbone (``lm_head`` dropped) and a fresh
    ``score`` head (normal, std ``1/sqrt(D)``, seeded) -- the usual RM initialisation from the SFT model."""
    backbone = {k: v for k, v in lm_params.items() if k != "lm_head"}
    head = jax.random.normal(jax.random.PRNGKey(seed), (config.hidden_size, 1), jnp.float32) / np.sqrt(config.hidden_size)
    return {"backbone": backbone, "score": head.astype(jnp.dtype(config.param_dtype))}


def save_pretrained(model: RewardModel, params: dict, out_dir: str, *, dtype: Any = None) -> str:
    """Write a HF ``*ForSequenceClassification`` directory (``num_labels = 1``) that transformers loads."""
    from jaxpref.models.convert import save_hf_checkpoint

    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    head = host["score"].T
    if dtype is not None:
        head = head.astype(np.dtype(dtype))
    save_hf_checkpoint(host["backbone"], model.config, out_dir, dtype=None if dtype is None else jnp.dtype(dtype),
                       extra_tensors={"score.weight": head})
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(architectures=[ARCHITECTURES[model.config.model_type]], id2label={"0": "LABEL_0"},
               label2id={"LABEL_0": 0}, problem_type="regression")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return out_dir


def from_pretrained(hf_dir: str, dtype: Any = jnp.float32) -> tuple[RewardModel, dict]:
    """Load a reward-model directory written by :func:`save_pretrained` (or any HF Llama/Mistral
    ``*ForSequenceClassification`` with one label) as ``(RewardModel, params)``."""
    from jaxpref.models.convert import CheckpointError, hf_to_flax_params, load_hf_config

    name = jnp.dtype(dtype).name
    config = load_hf_config(hf_dir, dtype=name, param_dtype=name)
    extras: dict[str, np.ndarray] = {}
    backbone = hf_to_flax_params(hf_dir, config, dtype=jnp.dtype(dtype), lm_head=False, extras=("score.weight",),
                                 extras_out=extras)
    if "score.weight" not in extras:
        raise CheckpointError(f"{hf_dir}: no 'score.weight' -- not a sequence-classification (reward) checkpoint.")
    if extras["score.weight"].shape != (1, config.hidden_size):
        raise CheckpointError(f"{hf_dir}: score.weight has shape {extras['score.weight'].shape}; a reward model "
                              f"has one label, shape (1, {config.hidden_size}).")
    params = {"backbone": backbone, "score": extras["score.weight"].T.astype(jnp.dtype(dtype))}
    return RewardModel(config), jax.tree_util.tree_map(jnp.asarray, params)
