"""jaxpref.logprobs against PyTorch's log_softmax/gather and hand-computed reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxpref import logprobs as LP


def _case(seed=0, b=3, t=11, v=1000, h=32):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(0, 1, (b, t, h)).astype(np.float32)
    kernel = rng.normal(0, 0.5, (h, v)).astype(np.float32)
    labels = rng.integers(0, v, (b, t))
    return hidden, kernel, labels


def _torch_token_logprobs(logits, labels):
    lp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=-1)
    return torch.gather(lp, -1, torch.tensor(labels)[..., None])[..., 0].numpy()


def test_token_logprobs_matches_torch():
    hidden, kernel, labels = _case()
    logits = hidden @ kernel
    np.testing.assert_allclose(LP.token_logprobs(jnp.asarray(logits), jnp.asarray(labels)),
                               _torch_token_logprobs(logits, labels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [128, 250, 333, 1000, 4096])
def test_chunked_matches_plain(chunk):
    """Chunk sizes that divide V, that do not (masked tail), and one larger than V."""
    hidden, kernel, labels = _case(seed=chunk)
    logits = jnp.asarray(hidden @ kernel)
    plain = LP.token_logprobs(logits, jnp.asarray(labels))
    chunked = LP.chunked_token_logprobs(logits, jnp.asarray(labels), chunk_size=chunk)
    from_hidden = LP.token_logprobs_from_hidden(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(labels),
                                                chunk_size=chunk)
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
    np.testing.assert_allclose(from_hidden, plain, atol=1e-5, rtol=0)


def test_chunked_gradients_match_plain():
    hidden, kernel, labels = _case(seed=3, v=777)
    mask = (np.arange(11)[None] >= np.array([[2], [5], [0]])).astype(np.float32)
    labels_j, mask_j = jnp.asarray(labels), jnp.asarray(mask)

    def plain(h, k):
        return LP.sequence_logprobs(LP.token_logprobs(h @ k, labels_j), mask_j)[0].sum()

    def fused(h, k):
        return LP.sequence_logprobs(LP.token_logprobs_from_hidden(h, k, labels_j, chunk_size=100), mask_j)[0].sum()

    def chunked(h, k):
        return LP.sequence_logprobs(LP.chunked_token_logprobs(h @ k, labels_j, chunk_size=256), mask_j)[0].sum()

    args = (jnp.asarray(hidden), jnp.asarray(kernel))
    g_plain = jax.grad(plain, argnums=(0, 1))(*args)
    for fn in (fused, chunked):
        g = jax.jit(jax.grad(fn, argnums=(0, 1)))(*args)
        for a, b in zip(g, g_plain):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_chunked_bf16_logits_stay_accurate():
    hidden, kernel, labels = _case(seed=5)
    logits = jnp.asarray(hidden @ kernel).astype(jnp.bfloat16)
    ref = LP.token_logprobs(logits.astype(jnp.float32), jnp.asarray(labels))
    out = LP.chunked_token_logprobs(logits, jnp.asarray(labels), chunk_size=256)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_sequence_logprobs_hand_computed():
    per_token = jnp.array([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -9.0, -9.0]])
    mask = jnp.array([[0, 1, 1, 0], [1, 1, 0, 0]])
    total, mean, count = LP.sequence_logprobs(per_token, mask)
    np.testing.assert_allclose(total, [-5.0, -1.0])
    np.testing.assert_allclose(mean, [-2.5, -0.5])
    np.testing.assert_allclose(count, [2, 2])
    _, mean_empty, _ = LP.sequence_logprobs(per_token, jnp.zeros_like(mask))
    np.testing.assert_allclose(mean_empty, [0.0, 0.0])


def test_shift_for_next_token():
    ids = jnp.array([[5, 6, 7, 8]])
    mask = jnp.array([[0, 0, 1, 1]])
    labels, shifted = LP.shift_for_next_token(ids, mask)
    np.testing.assert_array_equal(labels, [[6, 7, 8]])
    np.testing.assert_array_equal(shifted, [[0, 1, 1]])


def test_chunked_never_materialises_full_float32_logsoftmax():
    """The compiled chunked program's largest f32 buffer is [B, T, chunk], not [B, T, V]."""
    b, t, h, v, chunk = 2, 64, 16, 32000, 1000
    hidden = jnp.zeros((b, t, h), jnp.bfloat16)
    kernel = jnp.zeros((h, v), jnp.bfloat16)
    labels = jnp.zeros((b, t), jnp.int32)
    fn = jax.jit(lambda hh, k: LP.token_logprobs_from_hidden(hh, k, labels, chunk_size=chunk).sum())
    stats = fn.lower(hidden, kernel).compile().memory_analysis()
    full_f32_bytes = b * t * v * 4
    assert stats.temp_size_in_bytes < full_f32_bytes / 4, stats
