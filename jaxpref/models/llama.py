"""One Llama-family decoder in Flax Linen: Llama 1/2/3/3.1 and Mistral.

The module is used as a pure function of a params pytree::

    model = LlamaForCausalLM(config)
    logits = model.apply({"params": params}, input_ids, attention_mask=mask)   # [B, T, V]

Every parameter carries logical axis names (``nn.with_logical_partitioning``): ``vocab``, ``embed``,
``heads``, ``kv_heads``, ``head_dim``, ``mlp``, ``norm``; activations are constrained with
``activation_*`` names. :mod:`jaxpref.sharding` maps them to mesh axes; the model holds no mesh code.

Layout follows Hugging Face, so conversion is a transpose/reshape per tensor:
``q_proj`` kernel ``[embed, heads, head_dim]``, ``k_proj``/``v_proj`` ``[embed, kv_heads, head_dim]``,
``o_proj`` ``[heads, head_dim, embed]``. RoPE uses HF's half-split ("rotate_half") convention on the
HF weight layout, so no q/k permutation is needed in either direction (the permutation is only needed
when converting Meta's original interleaved checkpoints, which jaxpref does not read).

Masks are explicit. ``attention_mask`` ``[B, T]`` marks real tokens (left or right padding both
work; padded query rows produce garbage that callers must mask). ``positions`` default to
``cumsum(attention_mask) - 1`` so a left-padded row gets the same positions as the unpadded one.
``segment_ids`` ``[B, T]`` keep packed sequences apart (attention only within equal ids; 0 = padding).
Mistral's sliding window restricts key ``k`` for query ``q`` to ``q - k < sliding_window``.

KV cache: pass ``kv_cache`` (a tuple of per-layer ``(k, v)`` arrays ``[B, S, kv_heads, head_dim]``)
and ``cache_offset`` (slot of the first input token). Then ``attention_mask`` is ``[B, S]`` over the
cache slots (which slots hold real tokens, the new ones included) and ``positions`` must be given;
the call returns ``(logits, new_kv_cache)``. See :mod:`jaxpref.models.generate`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpref.models.config import ModelConfig

Array = jax.Array
KVCache = tuple[tuple[Array, Array], ...]

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _dtype(name: str):
    return jnp.dtype(name)


def _init(names: tuple[str, ...], std: float = 0.02):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


class RMSNorm(nn.Module):
    """``y = scale * x / sqrt(mean(x^2) + eps)``, the statistic in float32 (as HF)."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def rope_cos_sin(positions: Array, inv_freq: Array, dtype) -> tuple[Array, Array]:
    """cos/sin tables ``[B, T, head_dim]`` for integer ``positions`` ``[B, T]`` (HF's concatenated halves)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """``x * cos + rotate_half(x) * sin`` with ``x`` ``[B, T, heads, head_dim]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Projection(nn.Module):
    """A linear map contracting the last ``contract`` input axes into ``features`` output axes.

    Kernel shape ``[*in, *features]`` with logical ``names``; bias ``[*features]``. (``nn.DenseGeneral``
    initialises a flattened kernel, which breaks logical sharding constraints of multi-axis kernels.)
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    use_bias: bool
    dtype: Any
    param_dtype: Any
    contract: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[-self.contract:]
        kernel = self.param("kernel", _init(self.names), (*in_shape, *self.features), self.param_dtype)
        letters = "abcdefgh"
        ins, outs = letters[: self.contract], letters[self.contract : self.contract + len(self.features)]
        y = jnp.einsum(f"...{ins},{ins}{outs}->...{outs}", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[self.contract:]),
                              self.features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_offset=None):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head

        def proj(name, n_heads, head_axis):
            return Projection((n_heads, head_dim), ("embed", head_axis, "head_dim"), cfg.attention_bias, dtype, pdtype,
                              name=name)(x)

        q = proj("q_proj", heads, "heads")
        k = proj("k_proj", kv_heads, "kv_heads")
        v = proj("v_proj", kv_heads, "kv_heads")
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        new_cache = None
        if kv_cache is not None:
            cache_k, cache_v = kv_cache
            start = (0, cache_offset, 0, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_cache = (k, v)

        batch, length = q.shape[:2]
        groups = heads // kv_heads
        q = q.reshape(batch, length, kv_heads, groups, head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(dtype), preferred_element_type=jnp.float32)
        scores = scores * (head_dim**-0.5)
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype)).reshape(batch, length, heads, head_dim)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", None))
        out = Projection((cfg.hidden_size,), ("heads", "head_dim", "embed"), cfg.attention_bias, dtype, pdtype,
                         contract=2, name="o_proj")(out)
        return out, new_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)

        def dense(name, features, names):
            return nn.Dense(
                features, use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=pdtype, kernel_init=_init(names),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]), name=name,
            )

        gate = dense("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        up = dense("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return dense("down_proj", cfg.hidden_size, ("mlp", "embed"))(hidden)


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_offset=None):
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        attn_out, new_cache = Attention(cfg, name="self_attn")(
            RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_layernorm")(x), cos, sin, mask, kv_cache, cache_offset
        )
        x = x + attn_out
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, new_cache


def attention_mask_matrix(
    key_valid: Array,
    query_index: Array,
    key_index: Array,
    *,
    sliding_window: int | None = None,
    segment_ids: Array | None = None,
) -> Array:
    """Boolean ``[B, T, S]``: query ``t`` may attend key ``s``.

    Causal by index (``key_index <= query_index``), only to valid keys, within the sliding window
    (``query_index - key_index < sliding_window``), and within the same packed segment.
    """
    allowed = (key_index[None, None, :] <= query_index[None, :, None]) & key_valid[:, None, :].astype(bool)
    if sliding_window:
        allowed &= (query_index[:, None] - key_index[None, :] < sliding_window)[None]
    if segment_ids is not None:
        allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return allowed


class LlamaForCausalLM(nn.Module):
    """Decoder-only causal LM (Llama 1/2/3, Mistral). See the module docstring for the call contract."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        kv_cache: KVCache | None = None,
        cache_offset: Array | int = 0,
        return_hidden: bool = False,
    ):
        """Returns logits ``[B, T, V]`` (or the final normed hidden states ``[B, T, D]`` with
        ``return_hidden=True``); with ``kv_cache``, a tuple ``(output, new_kv_cache)``."""
        cfg = self.config
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length) if kv_cache is None else kv_cache[0][0].shape[:2], jnp.int32)
        if positions is None:
            if kv_cache is not None:
                raise ValueError("With kv_cache, pass `positions` (the RoPE position of each new token).")
            positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)

        query_index = jnp.asarray(cache_offset) + jnp.arange(length)
        key_index = jnp.arange(attention_mask.shape[1])
        mask = attention_mask_matrix(
            attention_mask, query_index, key_index,
            sliding_window=cfg.sliding_window if cfg.model_type == "mistral" else None,
            segment_ids=segment_ids if kv_cache is None else None,
        )
        cos, sin = rope_cos_sin(positions, jnp.asarray(cfg.inv_freq()), dtype)

        embed = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
            embedding_init=_init(("vocab", "embed")), name="embed_tokens",
        )
        x = embed(input_ids)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=True)
        new_cache = []
        for i in range(cfg.num_hidden_layers):
            layer_cache = None if kv_cache is None else kv_cache[i]
            x, c = layer_cls(cfg, name=f"layers_{i}")(x, cos, sin, mask, layer_cache, jnp.asarray(cache_offset))
            new_cache.append(c)
        x = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="norm")(x)

        if return_hidden:
            out = x
        elif cfg.tie_word_embeddings:
            out = embed.attend(x)
        else:
            out = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=pdtype,
                kernel_init=_init(("embed", "vocab")), name="lm_head",
            )(x)
        if not return_hidden:
            out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_vocab"))
        return out if kv_cache is None else (out, tuple(new_cache))


def lm_head_kernel(params: dict, config: ModelConfig) -> Array:
    """The output projection ``[D, V]`` (the transposed embedding for tied models), for
    :func:`jaxpref.logprobs.token_logprobs_from_hidden`."""
    if config.tie_word_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def init_params(config: ModelConfig, rng: Array | int = 0) -> dict:
    """Random parameters (HF's normal(0.02) init), unboxed (plain arrays)."""
    model = LlamaForCausalLM(config)
    rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    variables = model.init(rng, jnp.zeros((1, 4), jnp.int32))
    return nn.meta.unbox(variables["params"])


def logical_axes(config: ModelConfig) -> Any:
    """Pytree (same structure as the params) of ``PartitionSpec``s of logical axis names."""
    model = LlamaForCausalLM(config)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
    return nn.get_partition_spec(abstract)["params"]
