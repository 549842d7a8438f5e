"""Batched, jit-compiled sampling with a KV cache: greedy, temperature, top-k, top-p, stop on EOS.

Prompts are left-padded ``[B, P]`` with an explicit mask (:func:`left_pad` converts right-padded or
ragged prompts). The cache holds ``P + max_new_tokens`` slots per layer; the prompt is prefilled in one
forward pass, then one token per step in a ``lax.while_loop`` that exits early once every row has
emitted EOS. Finished rows emit ``pad_token_id`` and are masked out of ``mask``.

Used by ROPO's rejection sampling, APO's adversarial samples and the evaluation harness.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.llama import LlamaForCausalLM

Array = jax.Array


class GenerationOutput(NamedTuple):
    """``tokens`` ``[B, N]`` (pad after EOS), ``mask`` ``[B, N]`` (1 for generated tokens, EOS included),
    ``logprobs`` ``[B, N]`` (log pi(token) under the untempered model; 0 where masked)."""

    tokens: Array
    mask: Array
    logprobs: Array


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int = 0, length: int | None = None):
    """Ragged token lists -> left-padded ``(ids [B, P], mask [B, P])`` numpy arrays."""
    length = length or max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_token_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        if len(s) > length:
            raise ValueError(f"prompt {i} has {len(s)} tokens, more than the padded length {length}.")
        if len(s):
            ids[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
    return ids, mask


def sample_logits(logits: Array, rng: Array, *, temperature: float | Array = 1.0, top_k: int = 0,
                  top_p: float | Array = 1.0) -> Array:
    """Sample token ids ``[B]`` from ``logits`` ``[B, V]`` with temperature, top-k (static) and top-p.

    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (always at
    least the most likely one), as in HF's ``TopPLogitsWarper``.
    """
    logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = (mass_before < top_p) | (jnp.arange(logits.shape[-1]) == 0)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
    return jax.random.categorical(rng, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy", "top_k", "eos_ids", "pad_id"))
def _generate(params, prompt_ids, prompt_mask, rng, temperature, top_p, *, model: LlamaForCausalLM,
              max_new_tokens: int, greedy: bool, top_k: int, eos_ids: tuple[int, ...], pad_id: int):
    cfg = model.config
    batch, prompt_len = prompt_ids.shape
    slots = prompt_len + max_new_tokens
    cache_shape = (batch, slots, cfg.kv_heads, cfg.dim_per_head)
    cache = tuple((jnp.zeros(cache_shape, cfg.dtype), jnp.zeros(cache_shape, cfg.dtype))
                  for _ in range(cfg.num_hidden_layers))
    cache_mask = jnp.zeros((batch, slots), jnp.int32).at[:, :prompt_len].set(prompt_mask)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
    logits, cache = model.apply({"params": params}, prompt_ids, attention_mask=cache_mask, positions=positions,
                                kv_cache=cache, cache_offset=0)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def cond(state):
        step, _, _, done, *_ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, last_logits, cache, done, cache_mask, next_pos, rng, tokens, mask, logps = state
        rng, key = jax.random.split(rng)
        if greedy:
            token = jnp.argmax(last_logits, axis=-1).astype(jnp.int32)
        else:
            token = sample_logits(last_logits, key, temperature=temperature, top_k=top_k, top_p=top_p).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(last_logits.astype(jnp.float32)), token[:, None], -1)[:, 0]
        live = ~done
        token = jnp.where(live, token, pad_id)
        tokens = tokens.at[:, step].set(token)
        mask = mask.at[:, step].set(live.astype(jnp.int32))
        logps = logps.at[:, step].set(jnp.where(live, logp, 0.0))
        done = done | jnp.isin(token, eos)
        cache_mask = cache_mask.at[:, prompt_len + step].set(1)
        logits, cache = model.apply({"params": params}, token[:, None], attention_mask=cache_mask,
                                    positions=next_pos[:, None], kv_cache=cache, cache_offset=prompt_len + step)
        return step + 1, logits[:, -1], cache, done, cache_mask, next_pos + 1, rng, tokens, mask, logps

    state = (
        jnp.asarray(0), logits[:, -1], cache, jnp.zeros((batch,), bool), cache_mask,
        positions[:, -1] + 1, rng,
        jnp.full((batch, max_new_tokens), pad_id, jnp.int32), jnp.zeros((batch, max_new_tokens), jnp.int32),
        jnp.zeros((batch, max_new_tokens), jnp.float32),
    )
    state = jax.lax.while_loop(cond, body, state)
    return GenerationOutput(tokens=state[7], mask=state[8], logprobs=state[9])


def generate(
    model: LlamaForCausalLM,
    params: dict,
    prompt_ids: Array,
    prompt_mask: Array,
    *,
    max_new_tokens: int,
    rng: Array | int = 0,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens for each left-padded prompt.

    Args:
      prompt_ids, prompt_mask: ``[B, P]``, left-padded (every row's real tokens end at column ``P-1``).
      greedy: argmax decoding (temperature/top-k/top-p ignored).
      eos_token_id: stop token(s); defaults to the model config's.
      pad_token_id: emitted after EOS; defaults to the config's pad id, else 0.
    """
    mask_np = np.asarray(prompt_mask)
    if mask_np.ndim != 2 or not np.all(mask_np[:, -1] == 1):
        raise ValueError("prompt_mask must be [B, P] and left-padded (last column all ones); use left_pad().")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    cfg = model.config
    eos = cfg.eos_token_ids if eos_token_id is None else (
        (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    return _generate(params, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), rng,
                     jnp.float32(temperature), jnp.float32(top_p), model=model, max_new_tokens=max_new_tokens,
                     greedy=greedy, top_k=int(top_k), eos_ids=tuple(int(e) for e in eos), pad_id=int(pad))
