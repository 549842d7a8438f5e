"""Flax Llama/Mistral against transformers' PyTorch models; conversion both ways; sharding; errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from hf_fixtures import hf_logits, tiny_hf_model
from jaxpref import models, sharding
from jaxpref.models import convert

FAMILIES = ["llama2", "llama3", "mistral", "tied"]


def _padded_batch(vocab, t=12, seed=0):
    """Row 0 unpadded, row 1 left-padded by 4, row 2 right-padded by 3."""
    ids = np.random.default_rng(seed).integers(3, vocab, (3, t))
    mask = np.ones((3, t), np.int64)
    mask[1, :4] = 0
    mask[2, -3:] = 0
    return ids, mask


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    hf = tiny_hf_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path)
    return request.param, hf, path


def test_logits_match_transformers_with_padding(family_dir):
    family, hf, path = family_dir
    model, params = models.from_pretrained(path)
    ids, mask = _padded_batch(hf.config.vocab_size)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    ref = hf_logits(hf, ids, mask)
    diff = np.abs(ours - ref) * mask[..., None]
    assert diff.max() <= 1e-4, (family, diff.max())
    if family == "mistral":
        assert model.config.sliding_window == 5 < ids.shape[1]


def test_llama3_rope_scaling_matches_hf_inv_freq():
    hf = tiny_hf_model("llama3")
    cfg = models.ModelConfig.from_hf_dict(hf.config.to_dict())
    hf_inv = hf.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(cfg.inv_freq(), hf_inv, rtol=1e-6)
    assert not np.allclose(cfg.replace(rope_scaling=None).inv_freq(), hf_inv)  # the scaling matters here


def test_rope_permutation_is_detected(family_dir):
    """A Meta-style interleaved q/k permutation (the classic converter bug) must break parity."""
    family, hf, path = family_dir
    model, params = models.from_pretrained(path)
    hd = model.config.dim_per_head
    perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    bad = jax.tree_util.tree_map(lambda x: x, params)
    for i in range(model.config.num_hidden_layers):
        for name in ("q_proj", "k_proj"):
            k = bad[f"layers_{i}"]["self_attn"][name]["kernel"]
            bad[f"layers_{i}"]["self_attn"][name]["kernel"] = k[..., perm]
    ids, mask = _padded_batch(hf.config.vocab_size)
    ours = np.asarray(model.apply({"params": bad}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert (np.abs(ours - hf_logits(hf, ids, mask)) * mask[..., None]).max() > 1e-3


def test_packed_segments_do_not_attend_across(family_dir):
    family, hf, path = family_dir
    model, params = models.from_pretrained(path)
    rng = np.random.default_rng(1)
    a, b = rng.integers(3, 300, 7), rng.integers(3, 300, 6)
    ids = np.concatenate([a, b, [0, 0, 0]])[None]
    seg = np.array([[1] * 7 + [2] * 6 + [0] * 3])
    pos = np.array([list(range(7)) + list(range(6)) + [0] * 3])
    mask = (seg > 0).astype(np.int32)
    packed = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                    positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))
    for piece, sl in ((a, slice(0, 7)), (b, slice(7, 13))):
        ref = hf_logits(hf, piece[None], np.ones((1, len(piece)), np.int64))
        np.testing.assert_allclose(packed[:, sl], ref, atol=1e-4)


def test_round_trip_is_bit_identical_and_loads_in_transformers(family_dir, tmp_path):
    family, hf, path = family_dir
    model, params = models.from_pretrained(path)
    out = str(tmp_path / "export")
    models.save_pretrained(model, params, out, max_shard_bytes=200_000)  # force several shards
    assert os.path.exists(os.path.join(out, convert.SAFE_INDEX))
    with open(os.path.join(out, convert.SAFE_INDEX)) as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 1
    original = load_file(os.path.join(path, "model.safetensors"))
    exported = {}
    for shard in set(index["weight_map"].values()):
        exported.update(load_file(os.path.join(out, shard)))
    if hf.config.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = _padded_batch(hf.config.vocab_size)
    np.testing.assert_array_equal(hf_logits(reloaded, ids, mask), hf_logits(hf, ids, mask))


def test_bfloat16_round_trip_and_forward(tmp_path):
    hf = tiny_hf_model("llama3").to(torch.bfloat16)
    src = str(tmp_path / "bf16")
    hf.save_pretrained(src)
    model, params = models.from_pretrained(src, dtype=jnp.bfloat16)
    assert params["layers_0"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
    models.save_pretrained(model, params, str(tmp_path / "out"))
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    for name in a:
        assert b[name].dtype == ml_dtypes.bfloat16 and np.array_equal(a[name], b[name]), name
    ids, mask = _padded_batch(320)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)), np.float32)
    ref = hf_logits(hf.float(), ids, mask)
    assert (np.abs(ours - ref) * mask[..., None]).max() < 0.1  # bf16 compute


def test_pytorch_bin_checkpoint(tmp_path):
    hf = tiny_hf_model("llama2", seed=3)
    hf.save_pretrained(str(tmp_path), safe_serialization=False)
    if not os.path.exists(tmp_path / "pytorch_model.bin"):  # transformers 5 may always write safetensors
        state = {k: v.contiguous() for k, v in hf.state_dict().items()}
        torch.save(state, tmp_path / "pytorch_model.bin")
        os.remove(tmp_path / "model.safetensors")
    model, params = models.from_pretrained(str(tmp_path))
    ids, mask = _padded_batch(320)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert (np.abs(ours - hf_logits(hf, ids, mask)) * mask[..., None]).max() <= 1e-4


def test_clear_errors(tmp_path):
    with pytest.raises(convert.CheckpointError, match="does not exist"):
        models.from_pretrained(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(convert.CheckpointError, match="config.json is missing"):
        models.from_pretrained(str(empty))

    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(str(gpt2))
    with pytest.raises(convert.CheckpointError, match="Unsupported architecture.*gpt2"):
        models.from_pretrained(str(gpt2))

    hf = tiny_hf_model("llama2")
    src = tmp_path / "llama"
    hf.save_pretrained(str(src))
    cfg = json.loads((src / "config.json").read_text())
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.CheckpointError, match="No weights"):
        models.from_pretrained(str(no_weights))

    cfg["intermediate_size"] = 128
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight.*shape"):
        models.from_pretrained(str(src))


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 8, 1), (1, 4, 2)])
def test_sharded_forward_matches_single_device(mesh_shape):
    cfg = models.preset("tiny_mistral")
    model = models.LlamaForCausalLM(cfg)
    params = models.init_params(cfg, 0)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)))
    mask = jnp.asarray(np.random.default_rng(1).random((8, 16)) > 0.2).astype(jnp.int32).at[:, -1].set(1)
    ref = np.asarray(model.apply({"params": params}, ids, attention_mask=mask))
    mesh = sharding.make_mesh(*mesh_shape)
    param_sharding = sharding.logical_to_sharding(models.logical_axes(cfg), mesh)
    placed = jax.device_put(params, param_sharding)
    assert placed["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    batch = sharding.batch_sharding(mesh)
    with sharding.activation_rules(mesh):
        fn = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m),
                     in_shardings=(param_sharding, batch, batch))
        out = fn(placed, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_impossible_mesh_is_a_clear_error():
    with pytest.raises(ValueError, match="does not divide the 8 available devices"):
        sharding.make_mesh(3, -1, 1)
    with pytest.raises(ValueError, match="product must equal"):
        sharding.make_mesh(2, 2, 1)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_with_no_batch_dims"])
def test_remat_policies_give_same_values_and_gradients(policy):
    cfg = models.preset("tiny_llama")
    params = models.init_params(cfg, 1)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)))

    def loss(p, c):
        return models.LlamaForCausalLM(c).apply({"params": p}, ids).astype(jnp.float32).std()

    v0, g0 = jax.value_and_grad(loss)(params, cfg)
    v1, g1 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg.replace(remat_policy=policy))
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_presets_have_the_published_sizes():
    assert abs(models.preset("llama2_7b").num_params() / 1e9 - 6.74) < 0.01
    assert abs(models.preset("mistral_7b_v01").num_params() / 1e9 - 7.24) < 0.01
    assert abs(models.preset("llama3_8b").num_params() / 1e9 - 8.03) < 0.01


def test_convert_cli(tmp_path):
    import subprocess
    import sys

    hf = tiny_hf_model("mistral", seed=2)
    src = str(tmp_path / "src")
    hf.save_pretrained(src)
    run = lambda *a: subprocess.run([sys.executable, "-m", "jaxpref.convert", *a], capture_output=True, text=True,
                                    timeout=300)
    out = run("hf-to-flax", "--src", src, "--dst", str(tmp_path / "flax"))
    assert out.returncode == 0, out.stderr
    out = run("flax-to-hf", "--src", str(tmp_path / "flax"), "--dst", str(tmp_path / "back"))
    assert out.returncode == 0, out.stderr
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    bad = run("hf-to-flax", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
