"""Per-token and per-sequence log-probabilities from logits (or hidden states) and explicit masks.

Alignment convention: ``logits[:, t]`` is the distribution that scores ``labels[:, t]``. For a causal LM
fed ``input_ids`` this means ``labels = input_ids[:, 1:]`` against ``logits[:, :-1]``
(:func:`shift_for_next_token` does that). Masks are explicit ``[B, T]`` arrays (1 = count the token);
nothing is inferred from pad ids.

Memory: the plain path materialises ``[B, T, V]`` float32 log-softmax. With a 32k vocabulary that is the
largest activation of a small model, so :func:`chunked_token_logprobs` and
:func:`token_logprobs_from_hidden` walk the vocabulary in chunks with an online log-sum-exp and never
hold more than ``[B, T, chunk]`` at once (the latter never builds the logits at all).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "shift_for_next_token",
    "token_logprobs",
    "chunked_token_logprobs",
    "token_logprobs_from_hidden",
    "sequence_logprobs",
]


def shift_for_next_token(input_ids: Array, loss_mask: Array) -> tuple[Array, Array]:
    """Targets and mask for next-token scoring: ``(input_ids[:, 1:], loss_mask[:, 1:])``, each ``[B, T-1]``.

    Pair them with ``logits[:, :-1]``. ``loss_mask[:, t]`` marks whether token ``t`` is scored.
    """
    return input_ids[:, 1:], loss_mask[:, 1:]


def token_logprobs(logits: Array, labels: Array) -> Array:
    """``log softmax(logits)[b, t, labels[b, t]]`` in float32: logits ``[B, T, V]``, labels ``[B, T]`` -> ``[B, T]``."""
    logits = logits.astype(jnp.float32)
    label_logits = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return label_logits - jax.nn.logsumexp(logits, axis=-1)


def _online_logsumexp_scan(chunk_logits_fn, xs, shape) -> Array:
    """log-sum-exp over vocabulary chunks: carries (running max, running sum of exp(x - max)); ``xs`` is what
    the scan walks (a chunk index array, or per-chunk operands), ``chunk_logits_fn(x)`` one chunk's logits."""

    @jax.checkpoint  # recompute each chunk's logits in the backward pass instead of storing them all
    def body(carry, x):
        running_max, running_sum = carry
        chunk = chunk_logits_fn(x)  # [B, T, C] float32, -inf on padding columns
        # The shift cancels analytically, so it carries no gradient.
        new_max = jax.lax.stop_gradient(jnp.maximum(running_max, jnp.max(chunk, axis=-1)))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(chunk - new_max[..., None]), -1)
        return (new_max, running_sum), None

    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32))
    (final_max, final_sum), _ = jax.lax.scan(body, init, xs)
    return final_max + jnp.log(final_sum)


def chunked_token_logprobs(logits: Array, labels: Array, *, chunk_size: int = 4096) -> Array:
    """Same as :func:`token_logprobs`, but never materialises the ``[B, T, V]`` float32 log-softmax.

    The logits may be bf16; only ``[B, T, chunk_size]`` float32 is live at a time. A vocabulary that is not
    a multiple of ``chunk_size`` is handled by masking the tail of the last chunk.
    """
    batch, length, vocab = logits.shape
    num_chunks = -(-vocab // chunk_size)
    padded = jnp.pad(logits, ((0, 0), (0, 0), (0, num_chunks * chunk_size - vocab)))
    column = jnp.arange(chunk_size)

    def chunk_logits(i):
        chunk = jax.lax.dynamic_slice_in_dim(padded, i * chunk_size, chunk_size, axis=-1).astype(jnp.float32)
        return jnp.where(i * chunk_size + column < vocab, chunk, -jnp.inf)

    lse = _online_logsumexp_scan(chunk_logits, jnp.arange(num_chunks), (batch, length))
    label_logits = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return label_logits.astype(jnp.float32) - lse


@jax.custom_vjp
def _chunk_logits(hidden: Array, kernel: Array) -> Array:
    """``hidden [B, T, H] @ kernel[C, H]^T -> [B, T, C]`` float32 (one vocabulary chunk's logits)."""
    return jnp.einsum("bth,ch->btc", hidden, kernel, preferred_element_type=jnp.float32)


def _chunk_logits_fwd(hidden, kernel):
    return _chunk_logits(hidden, kernel), (hidden, kernel)


def _chunk_logits_bwd(residuals, g):
    """The two products autodiff would form, with the weight gradient computed as ``hidden^T g`` ([H, C]) and
    transposed: XLA otherwise materialises ``g`` ([B, T, C], the largest array of the head) transposed. ``g`` is
    float32 (the logits are); a bf16 operand is promoted to it, as in autodiff's own transpose of the forward."""
    hidden, kernel = residuals
    d_hidden = jnp.einsum("btc,ch->bth", g, kernel, preferred_element_type=jnp.float32)
    d_kernel = jnp.einsum("bth,btc->hc", hidden, g, preferred_element_type=jnp.float32).T
    return d_hidden.astype(hidden.dtype), d_kernel.astype(kernel.dtype)


_chunk_logits.defvjp(_chunk_logits_fwd, _chunk_logits_bwd)


def token_logprobs_from_hidden(
    hidden: Array, lm_head: Array, labels: Array, *, chunk_size: int = 4096
) -> Array:
    """Per-token log-probs straight from final hidden states, without building the logits.

    Args:
      hidden: ``[B, T, H]`` final (normed) hidden states.
      lm_head: ``[H, V]`` output projection (the transposed embedding for tied models).
      labels: ``[B, T]`` target ids.

    The label logit is ``<hidden, lm_head[:, label]>`` (a gather of ``[B, T, H]`` columns); the
    normaliser is an online log-sum-exp over vocabulary chunks of ``hidden @ lm_head[:, chunk]``, each
    chunk recomputed in the backward pass. Peak extra memory is ``[B, T, chunk_size]`` float32.
    Matmuls run in the dtype of ``hidden``/``lm_head`` with float32 accumulation.

    The kernel is laid out once per call as ``[num_chunks, chunk_size, H]`` (vocabulary rows, contiguous per
    chunk) and the scan walks its leading axis: no strided column slice is copied per chunk, and each chunk's
    matmuls take the weight in the ``[out, in]`` layout CPU matmul libraries are fastest with (measured on the
    benchmark model: see ``bench/profile_dpo_step.py``).
    """
    batch, length, hidden_size = hidden.shape
    vocab = lm_head.shape[1]
    num_chunks = -(-vocab // chunk_size)
    padded = jnp.pad(lm_head, ((0, 0), (0, num_chunks * chunk_size - vocab)))
    chunks = padded.T.reshape(num_chunks, chunk_size, hidden_size)  # [n, C, H]
    column = jnp.arange(chunk_size)

    def chunk_logits(xs):
        kernel, i = xs
        return jnp.where(i * chunk_size + column < vocab, _chunk_logits(hidden, kernel), -jnp.inf)

    lse = _online_logsumexp_scan(chunk_logits, (chunks, jnp.arange(num_chunks)), (batch, length))
    label_columns = jnp.take(lm_head.T, labels.astype(jnp.int32), axis=0)  # [B, T, H]
    label_logits = jnp.einsum("bth,bth->bt", hidden, label_columns, preferred_element_type=jnp.float32)
    return label_logits - lse


def sequence_logprobs(per_token_logps: Array, loss_mask: Array) -> tuple[Array, Array, Array]:
    """Reduce per-token log-probs ``[B, T]`` over the masked positions.

    Returns ``(sum, mean, count)``, each ``[B]``: the summed log-prob (what DPO uses), the
    length-normalised mean (SimPO/IPO-style; 0 for an empty mask) and the number of scored tokens.
    """
    mask = loss_mask.astype(jnp.float32)
    total = jnp.sum(per_token_logps * mask, axis=-1)
    count = jnp.sum(mask, axis=-1)
    return total, total / jnp.maximum(count, 1.0), count


def sequence_sums(values: Array, mask: Array, sequence_ids: Array, num_pairs: int) -> tuple[Array, Array]:
    """Per-sequence sums of a preference batch: ``sum_t values[r, t] * mask[r, t]`` grouped by
    ``sequence_ids`` ``[R, L]`` (sequence ``2i`` = pair ``i``'s chosen response, ``2i + 1`` its rejected one,
    ``2P`` = padding) -> ``(chosen [P], rejected [P])``. One ``segment_sum``, so packed rows (several sequences
    per row) and plain rows are the same computation. With per-token log-probs and the response mask this
    is the summed response log-prob of every sequence; with a reward model's per-token scores and a
    last-token mask it is every sequence's reward."""
    flat = (values * mask).reshape(-1)
    sums = jax.ops.segment_sum(flat, sequence_ids.reshape(-1), num_segments=2 * num_pairs + 1)[: 2 * num_pairs]
    sums = sums.reshape(num_pairs, 2)
    return sums[:, 0], sums[:, 1]
