"""KV-cache sampler: cache consistency, EOS stopping, sampling filters, and the real SmolLM2-135M vs transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_fixtures import hf_logits, smollm2_hf_dir, tiny_hf_model
from jaxpref import logprobs as LP
from jaxpref import models
from jaxpref.models.generate import generate, left_pad, sample_logits


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    hf = tiny_hf_model("mistral", seed=4)
    path = str(tmp_path_factory.mktemp("mistral"))
    hf.save_pretrained(path)
    model, params = models.from_pretrained(path)
    return hf, model, params


def test_cached_logprobs_equal_teacher_forced_forward(tiny_mistral):
    """Each sampled token's log-prob from the cached decode equals a full forward pass over prompt + sample."""
    _, model, params = tiny_mistral
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    ids, mask = left_pad(prompts)
    out = generate(model, params, ids, mask, max_new_tokens=10, rng=3, temperature=1.0, eos_token_id=())
    full = jnp.concatenate([jnp.asarray(ids), out.tokens], axis=1)
    full_mask = jnp.concatenate([jnp.asarray(mask), out.mask], axis=1)
    logits = model.apply({"params": params}, full, attention_mask=full_mask)
    per_token = LP.token_logprobs(logits[:, :-1], full[:, 1:])[:, ids.shape[1] - 1:]
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(per_token), atol=2e-5)


def test_left_padded_batch_equals_single_prompts(tiny_mistral):
    """Sliding window 5 < prompt + generation: the cache, window and padding must all be right."""
    hf, model, params = tiny_mistral
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22], [30]]
    ids, mask = left_pad(prompts)
    batched = generate(model, params, ids, mask, max_new_tokens=12, greedy=True, eos_token_id=())
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(p):].tolist()
        assert np.asarray(batched.tokens[i]).tolist() == ref, i


def test_stops_on_eos_and_pads_after(tiny_mistral):
    _, model, params = tiny_mistral
    ids, mask = left_pad([[5, 6, 7], [8, 9]])
    free = generate(model, params, ids, mask, max_new_tokens=6, greedy=True, eos_token_id=())
    eos = int(free.tokens[0, 2])  # make the third greedy token of row 0 the EOS
    out = generate(model, params, ids, mask, max_new_tokens=6, greedy=True, eos_token_id=eos, pad_token_id=0)
    row = np.asarray(out.tokens[0])
    assert row[:3].tolist() == np.asarray(free.tokens[0, :3]).tolist()
    assert np.asarray(out.mask[0]).tolist() == [1, 1, 1, 0, 0, 0]
    assert row[3:].tolist() == [0, 0, 0]
    assert np.all(np.asarray(out.logprobs[0, 3:]) == 0.0)


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.PRNGKey(0)
    only_top = sample_logits(logits, keys, top_p=0.5)
    assert set(np.asarray(only_top).tolist()) == {0}
    top2 = np.asarray(sample_logits(logits, keys, top_p=0.75))
    assert set(top2.tolist()) == {0, 1}
    np.testing.assert_allclose((top2 == 0).mean(), 0.5 / 0.8, atol=0.03)
    top3k = np.asarray(sample_logits(logits, keys, top_k=3))
    assert set(top3k.tolist()) == {0, 1, 2}
    np.testing.assert_allclose((top3k == 2).mean(), 0.15 / 0.95, atol=0.03)
    cold = np.asarray(sample_logits(logits, keys, temperature=0.05))
    assert (cold == 0).mean() > 0.99
    hot = np.asarray(sample_logits(logits, keys, temperature=1.0))
    np.testing.assert_allclose(np.bincount(hot, minlength=4) / len(hot), [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_bad_prompts_are_rejected(tiny_mistral):
    _, model, params = tiny_mistral
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, params, np.array([[5, 6, 0]]), np.array([[1, 1, 0]]), max_new_tokens=2)


# ---- the real SmolLM2-135M-Instruct checkpoint --------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_hf_dir()
    model, params = models.from_pretrained(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return model, params, hf, tok


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "Water boils at"]


def test_smollm2_logits_match_transformers(smollm2):
    model, params, hf, tok = smollm2
    ids, mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], pad_token_id=tok.pad_token_id)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    diff = np.abs(ours - hf_logits(hf, ids, mask)) * mask[..., None]
    # 30 layers of fp32 with different matmul orders: ~1.5e-4 observed on logits of magnitude ~20.
    assert diff.max() <= 5e-4, diff.max()


def test_smollm2_greedy_generation_equals_transformers(smollm2):
    model, params, hf, tok = smollm2
    encoded = [tok(p)["input_ids"] for p in PROMPTS]
    ids, mask = left_pad(encoded, pad_token_id=tok.pad_token_id)
    out = generate(model, params, ids, mask, max_new_tokens=32, greedy=True)
    for i, p in enumerate(encoded):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False)[0, len(p):].tolist()
        ours = np.asarray(out.tokens[i])[np.asarray(out.mask[i]) == 1].tolist()
        assert ours == ref, (PROMPTS[i], tok.decode(ours), tok.decode(ref))
