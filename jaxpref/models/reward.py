"""A scalar-head reward model on the Llama/Mistral decoder, and its Hugging Face conversion.

``RewardModel(config)(input_ids, attention_mask, positions, segment_ids) -> [B, T]`` per-token scores
``s_t = h_t . w`` (``h`` the final normed hidden states, ``w`` the ``score`` head ``[D, 1]``, no bias).
A sequence's reward is the score at its **last response token** (:func:`sequence_rewards`), found from the
batch's response mask -- never inferred from pad ids, so padding, packing and pad == EOS tokenizers are
all safe.

Parameters are ``{"backbone": <LlamaForCausalLM params without lm_head>, "score": {"kernel": [D, 1]}}``.
On disk a reward model is a Hugging Face ``LlamaForSequenceClassification`` / ``MistralForSequenceClassification``
directory (``model.*`` tensors + ``score.weight [1, D]``, ``num_labels = 1``) whose ``pad_token_id`` is never
an EOS id (:func:`reward_pad_token_id`), so transformers scores a right-padded batch with identical scores
(tested).
"""

from __future__ import annotations

import copy
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


def sequence_rewards(params, model: RewardModel, batch, *, vocab_chunk: int | None = None):
    """Rewards ``(chosen [P], rejected [P])`` of a preference batch (:class:`jaxpref.train.step.Batch`): each
    sequence's score at its last response token. Same signature as :func:`jaxpref.train.step.pair_logprobs`."""
    from jaxpref.logprobs import sequence_sums

    del vocab_chunk
    scores = model.apply({"params": params}, batch.input_ids, attention_mask=batch.attention_mask,
                         positions=batch.positions, segment_ids=batch.segment_ids)
    end = last_response_token_mask(batch.loss_mask, batch.sequence_ids).astype(scores.dtype)
    return sequence_sums(scores, end, batch.sequence_ids, batch.num_pairs)


def from_causal_lm(lm_params: dict, config: ModelConfig, *, seed: int = 0) -> dict:
    """Reward-model params from a causal LM's: the decoder as the backbone (``lm_head`` dropped) and a fresh
    ``score`` head (normal, std ``1/sqrt(D)``, seeded) -- the usual RM initialisation from the SFT model."""
    backbone = {k: v for k, v in lm_params.items() if k != "lm_head"}
    head = jax.random.normal(jax.random.PRNGKey(seed), (config.hidden_size, 1), jnp.float32) / np.sqrt(config.hidden_size)
    return {"backbone": backbone, "score": head.astype(jnp.dtype(config.param_dtype))}


def reward_pad_token_id(config: ModelConfig, tokenizer: Any = None) -> tuple[int, Any, int]:
    """The ``pad_token_id`` a ``*ForSequenceClassification`` export declares, so that transformers scores
    a right-padded batch exactly as jaxpref does. Returns ``(pad_id, tokenizer, vocab_size)``.

    transformers reads a sequence's score at its rightmost token whose id is not ``pad_token_id``;
    jaxpref reads it at the last response token, which is EOS (or, for a truncated response, any token).
    The two agree when the pad id is a token that never ends a sequence -- in particular not EOS, which
    many tokenizers also use as their pad token. The pad id is:

    1. the tokenizer's own pad token, when it is not an EOS id (of the tokenizer or of ``config``);
    2. else a special token ``"<pad>"`` added to a copy of the tokenizer (id ``len(tokenizer)``, which
       that tokenizer never produced before). When that id is beyond the model's vocabulary the export's
       embedding gains zero rows up to it (a pad row's value never reaches a score: pads come after the
       scored token and are masked). The returned tokenizer pads with this id.
    3. without a tokenizer: ``config.pad_token_id`` when set and not EOS, else ``config.vocab_size``
       (one added zero row).

    ``vocab_size`` is the export's embedding size (``config.vocab_size`` unless a row was added).
    Raises:
      CheckpointError: the tokenizer has more tokens than the model's vocabulary.
    """
    from jaxpref.models.convert import CheckpointError

    ending = set(config.eos_token_ids)
    if tokenizer is None:
        if config.pad_token_id is not None and config.pad_token_id not in ending:
            return config.pad_token_id, None, config.vocab_size
        return config.vocab_size, None, config.vocab_size + 1
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"The tokenizer ({getattr(tokenizer, 'name_or_path', '')!s}) has {len(tokenizer)} tokens "
                              f"but the reward model's vocabulary has {config.vocab_size}; pass its own tokenizer.")
    if tokenizer.eos_token_id is not None:
        ending.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in ending:
        return tokenizer.pad_token_id, tokenizer, config.vocab_size
    tokenizer = copy.deepcopy(tokenizer)  # never change the caller's tokenizer
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    pad = tokenizer.pad_token_id
    if pad in ending:  # "<pad>" was already the EOS token: a bug in the tokenizer's special tokens
        raise CheckpointError(f"The tokenizer's '<pad>' token is its EOS (id {pad}); give it a distinct pad token.")
    return pad, tokenizer, max(config.vocab_size, pad + 1)


def save_pretrained(model: RewardModel, params: dict, out_dir: str, *, dtype: Any = None, tokenizer_dir: Any = None,
                    source_dir: str | None = None, max_shard_bytes: int = 2 * 1024**3) -> str:
    """Write a HF ``LlamaForSequenceClassification`` / ``MistralForSequenceClassification`` directory
    (``num_labels = 1``, the head as ``score.weight [1, D]``) that transformers loads; returns ``out_dir``.

    ``config.json`` declares the pad id of :func:`reward_pad_token_id`, so
    ``AutoModelForSequenceClassification`` scores a right-padded batch (padded with that id, e.g. by the
    exported tokenizer) at each sequence's last real token -- jaxpref's read-out. When the tokenizer pads
    with EOS, the export's tokenizer gets a new ``"<pad>"`` token instead.

    Args:
      model, params: the reward model and its params (device arrays are copied to the host).
      out_dir: output directory.
      dtype: stored dtype (default: the params' own).
      tokenizer_dir: tokenizer to save with it (directory, cached Hub id or tokenizer object); default
        ``source_dir``'s when it has one.
      source_dir: the checkpoint the backbone came from; its ``model_type`` picks the config class.
      max_shard_bytes: largest safetensors shard.
    """
    from jaxpref.models import convert as C

    source_dir = C.resolve_model_dir(source_dir) if source_dir else None
    if tokenizer_dir is None and source_dir and C.has_tokenizer(source_dir):
        tokenizer_dir = source_dir
    tokenizer = None if tokenizer_dir is None else C.load_export_tokenizer(tokenizer_dir)
    pad, tokenizer, vocab_size = reward_pad_token_id(model.config, tokenizer)
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    head = host["score"].T
    if head.shape != (1, model.config.hidden_size):
        raise C.CheckpointError(f"The reward head 'score' has shape {host['score'].shape}; a reward model of this "
                                f"config has ({model.config.hidden_size}, 1).")
    if dtype is not None:
        head = head.astype(np.dtype(dtype))
    model_type = C.source_model_type(source_dir) or model.config.model_type
    fields = dict(architectures=[ARCHITECTURES[model_type]], id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0},
                  problem_type="regression", pad_token_id=pad)
    stored = None if dtype is None else jnp.dtype(dtype)
    C.write_weights_and_config(host["backbone"], model.config, out_dir, dtype=stored, max_shard_bytes=max_shard_bytes,
                               extra_tensors={"score.weight": head}, lm_head=False, model_type=model_type,
                               vocab_size=vocab_size, config_fields=fields)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def from_pretrained(hf_dir: str, dtype: Any = jnp.float32) -> tuple[RewardModel, dict]:
    """Load a reward-model directory written by :func:`save_pretrained` (or any HF Llama/Mistral
    ``*ForSequenceClassification`` with one label; a local directory or a cached Hub id) as
    ``(RewardModel, params)``."""
    from jaxpref.models.convert import CheckpointError, hf_to_flax_params, load_hf_config, resolve_model_dir

    hf_dir = resolve_model_dir(hf_dir)
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
