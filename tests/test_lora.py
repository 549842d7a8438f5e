"""LoRA adapters (jaxpref.models.lora) against PEFT on the transformers model built from the same weights:
logits, gradients, merged weights and the adapter file format both ways; adapters off = base; sharding."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from hf_fixtures import hf_logits
from jaxpref import models as M
from jaxpref import sharding as S
from jaxpref.errors import ConfigError
from jaxpref.models import lora as L

ALL = tuple(L.TARGETS)

CONFIGS = {
    "llama": M.preset("tiny_llama"),                                        # MHA, untied
    "mistral": M.preset("tiny_mistral", sliding_window=5),                  # GQA + window shorter than T=12
    "tied": M.preset("tiny_llama", num_key_value_heads=2, tie_word_embeddings=True),
}


def _base(family, seed=0, **overrides):
    """Model and random params; norm scales randomised so that a misplaced norm cannot hide."""
    cfg = CONFIGS[family].replace(**overrides)
    params = M.init_params(cfg, seed)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * (1.0 + 0.2 * rng.standard_normal(x.shape, np.float32))
        if path[-1].key == "scale" else x, params)
    return cfg, M.LlamaForCausalLM(cfg), params


def _random_adapters(cfg, settings, seed=1, std=0.1):
    """Adapters with random non-zero A and B (fresh ones have B = 0, which hides layout mistakes)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(std * rng.standard_normal(x.shape), jnp.float32),
                                  L.init_lora(cfg, settings, 0))


def _batch(vocab, b=3, t=12, seed=0):
    """Row 0 unpadded, row 1 left-padded by 4, row 2 right-padded by 3."""
    ids = np.random.default_rng(seed).integers(3, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :4] = 0
    mask[2, -3:] = 0
    return ids, mask


def _lm_loss(logits, ids, mask):
    """Mean next-token cross-entropy over real tokens (the same formula is written in torch below)."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, jnp.asarray(ids)[:, 1:, None], axis=-1)[..., 0]
    m = jnp.asarray(mask[:, 1:] * mask[:, :-1], jnp.float32)
    return -(tok * m).sum() / m.sum()


def _torch_lm_loss(logits, ids, mask):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    tok = torch.gather(logp, -1, torch.tensor(ids)[:, 1:, None])[..., 0]
    m = torch.tensor(mask[:, 1:] * mask[:, :-1], dtype=torch.float32)
    return -(tok * m).sum() / m.sum()


def _to_peft_layout(adapters, settings):
    """Our adapters as PEFT tensors ``{key: [r, in] / [out, r]}``, written out by hand from the layout map."""
    out = {}
    r = settings.rank
    for layer, groups in adapters.items():
        for parent, mods in groups.items():
            for name, ab in mods.items():
                key = f"model.layers.{layer.split('_')[1]}.{parent}.{name}"
                out[key + ".lora_A"] = np.asarray(ab["lora_a"]).reshape(-1, r).T
                out[key + ".lora_B"] = np.asarray(ab["lora_b"]).reshape(r, -1).T
    return out


def _save_base(model, params, path):
    M.save_pretrained(model, params, str(path))
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


# ---- 1, 2: B = 0 is the base; gradients reach only the adapters ------------------------------------------


def test_zero_b_equals_base_and_one_step_moves_only_adapters():
    cfg, model, params = _base("llama", num_hidden_layers=1)
    settings = L.LoraSettings(rank=4, alpha=8.0, target_modules=ALL)
    adapters = L.init_lora(cfg, settings, jax.random.PRNGKey(1))
    ids, mask = _batch(cfg.vocab_size)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    base_copy = jax.tree_util.tree_map(np.array, params)

    base_fn = jax.jit(lambda p: model.apply({"params": p}, ids_j, attention_mask=mask_j))
    lora_fn = jax.jit(lambda p, a: L.apply_lora(model, p, a, ids_j, attention_mask=mask_j, settings=settings))
    base_logits = np.asarray(base_fn(params))
    np.testing.assert_array_equal(np.asarray(lora_fn(params, adapters)), base_logits)

    loss = lambda a: _lm_loss(L.apply_lora(model, params, a, ids_j, attention_mask=mask_j, settings=settings), ids, mask)
    grad_fn = jax.jit(jax.value_and_grad(loss))
    _, grads = grad_fn(adapters)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(adapters)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert g.dtype == jnp.float32
        if path[-1].key == "lora_a":  # dL/dA = x^T (dL/dy) B^T = 0 while B = 0 (by hand)
            assert not np.any(np.asarray(g)), path
        else:
            assert np.abs(np.asarray(g)).max() > 0, path

    opt = optax.adam(1e-2)
    opt_state = opt.init(adapters)
    for _ in range(2):
        value, grads = grad_fn(adapters)
        updates, opt_state = opt.update(grads, opt_state, adapters)
        adapters = optax.apply_updates(adapters, updates)
    new_value, grads = grad_fn(adapters)
    assert float(new_value) < float(value)
    # after a step B != 0, so A gets gradient too
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree_util.tree_leaves(grads))
    assert np.abs(np.asarray(lora_fn(params, adapters)) - base_logits).max() > 1e-3
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, base_copy)  # bit-identical base
    np.testing.assert_array_equal(np.asarray(base_fn(params)), base_logits)


# ---- 3: PEFT parity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,targets", [("llama", ALL), ("mistral", ALL), ("tied", ("q_proj", "v_proj"))])
def test_peft_parity_logits_gradients_and_merge(family, targets, tmp_path):
    cfg, model, params = _base(family)
    settings = L.LoraSettings(rank=4, alpha=12.0, target_modules=targets)
    adapters = _random_adapters(cfg, settings)
    hf = _save_base(model, params, tmp_path / "base")
    L.save_peft_adapter(adapters, cfg, settings, str(tmp_path / "adapter"), base_model_name_or_path=str(tmp_path / "base"))
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter"), is_trainable=True)
    peft_model.eval()  # no dropout; lora_dropout is 0 anyway

    ids, mask = _batch(cfg.vocab_size)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)

    @jax.jit
    def ours_fn(a):
        forward = lambda a, **kw: L.apply_lora(model, params, a, ids_j, attention_mask=mask_j, settings=settings, **kw)
        return forward(a), forward(a, enabled=False), jax.grad(lambda a: _lm_loss(forward(a), ids, mask))(a)

    ours, ours_off, grads = (jax.tree_util.tree_map(np.asarray, x) for x in ours_fn(adapters))
    ref = hf_logits(peft_model, ids, mask)
    with peft_model.disable_adapter():
        ref_off = hf_logits(peft_model, ids, mask)
    masked_diff = lambda u, v: (np.abs(u - v) * mask[..., None]).max()
    assert masked_diff(ours, ref) <= 1e-4, masked_diff(ours, ref)
    assert masked_diff(ours_off, ref_off) <= 1e-4  # adapters off = PEFT's disable_adapter()
    assert masked_diff(ours, ref_off) > 1e-2  # the adapters do change the logits
    if family == "mistral":
        assert cfg.sliding_window < ids.shape[1]

    # gradients w.r.t. A and B against torch autograd through PEFT
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    out = peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions))
    _torch_lm_loss(out.logits, ids, mask).backward()
    torch_grads = {n.replace("base_model.model.", "").replace(".default.weight", ""): p.grad.numpy()
                   for n, p in peft_model.named_parameters() if "lora_" in n}
    ours_g = _to_peft_layout(grads, settings)
    assert set(ours_g) == set(torch_grads) and len(ours_g) == 2 * len(targets) * cfg.num_hidden_layers
    for key, g in ours_g.items():
        np.testing.assert_allclose(g, torch_grads[key], atol=2e-5, rtol=1e-3, err_msg=key)

    # merge_lora = PEFT's merge_and_unload, exported through the project's HF writer
    merged = L.merge_lora(params, adapters, cfg, settings)
    M.save_pretrained(model, merged, str(tmp_path / "merged"))
    ours_sd = load_file(str(tmp_path / "merged" / "model.safetensors"))
    peft_sd = {k: v.detach().numpy() for k, v in peft_model.merge_and_unload().state_dict().items()}
    if cfg.tie_word_embeddings:
        peft_sd.pop("lm_head.weight", None)
    assert set(ours_sd) == set(peft_sd)
    changed = 0
    for key, w in peft_sd.items():
        np.testing.assert_allclose(ours_sd[key], w, atol=1e-6, rtol=0, err_msg=key)
        changed += not np.array_equal(ours_sd[key], load_file(str(tmp_path / "base" / "model.safetensors"))[key])
    assert changed == len(targets) * cfg.num_hidden_layers


def test_adapter_files_match_what_peft_writes_and_load_back(tmp_path):
    """PEFT's own ``save_pretrained`` fixes the key names, shapes and config; a PEFT-written adapter loads
    into jaxpref with PEFT's logits."""
    cfg, model, params = _base("mistral")
    hf = _save_base(model, params, tmp_path / "base")
    peft_cfg = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=list(ALL), task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(hf, peft_cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
    peft_model.save_pretrained(str(tmp_path / "peft"))

    settings = L.LoraSettings(rank=4, alpha=16.0, target_modules=ALL)
    L.save_peft_adapter(_random_adapters(cfg, settings), cfg, settings, str(tmp_path / "ours"))
    theirs_t = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    ours_t = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in ours_t.items()} == {k: v.shape for k, v in theirs_t.items()}
    assert "base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight" in ours_t
    theirs_c = json.load(open(tmp_path / "peft" / "adapter_config.json"))
    ours_c = json.load(open(tmp_path / "ours" / "adapter_config.json"))
    for key in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "bias", "fan_in_fan_out", "use_rslora",
                "use_dora"):
        assert ours_c[key] == theirs_c[key], key
    assert sorted(ours_c["target_modules"]) == sorted(theirs_c["target_modules"])

    loaded, loaded_settings = L.load_peft_adapter(str(tmp_path / "peft"), cfg)
    assert loaded_settings == settings
    ids, mask = _batch(cfg.vocab_size)
    ours = np.asarray(L.apply_lora(model, params, loaded, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                   settings=loaded_settings))
    ref = hf_logits(peft_model, ids, mask)
    assert (np.abs(ours - ref) * mask[..., None]).max() <= 1e-4
    # and our writer round-trips through our reader exactly
    again, _ = L.load_peft_adapter(L.save_peft_adapter(loaded, cfg, settings, str(tmp_path / "again")), cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, loaded)


def test_init_matches_peft_default_distribution(tmp_path):
    """PEFT's default init: B = 0, A ~ U(+-1/sqrt(fan_in)) (kaiming_uniform_(a=sqrt(5)) on [r, fan_in])."""
    cfg, model, params = _base("mistral")
    settings = L.LoraSettings(rank=8, alpha=16.0, target_modules=ALL)
    ours = _to_peft_layout(L.init_lora(cfg, settings, 3), settings)
    hf = _save_base(model, params, tmp_path / "base")
    theirs = {n.replace("base_model.model.", "").replace(".default.weight", ""): p.detach().numpy()
              for n, p in peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, target_modules=list(ALL)))
              .named_parameters() if "lora_" in n}
    assert set(ours) == set(theirs)
    for key, a in ours.items():
        assert a.dtype == np.float32
        if key.endswith("lora_B"):
            assert not a.any() and not theirs[key].any()
            continue
        bound = 1.0 / math.sqrt(a.shape[1])
        for w in (a, theirs[key]):
            assert bound * 0.9 < np.abs(w).max() <= bound, key
            assert abs(w.std() - bound / math.sqrt(3)) < 0.15 * bound, key  # std of U(-b, b) is b/sqrt(3)
    # different seeds, different draws
    assert not np.array_equal(ours["model.layers.0.self_attn.q_proj.lora_A"],
                              _to_peft_layout(L.init_lora(cfg, settings, 4), settings)["model.layers.0.self_attn.q_proj.lora_A"])


# ---- 4: adapters off, hidden states, dropout, sharding -------------------------------------------------


def test_adapters_off_is_exactly_base_and_hidden_path():
    cfg, model, params = _base("tied")
    settings = L.LoraSettings(rank=4, alpha=8.0, target_modules=ALL)
    adapters = _random_adapters(cfg, settings)
    ids, mask = (jnp.asarray(x) for x in _batch(cfg.vocab_size))

    @jax.jit
    def run(p, a):
        base = model.apply({"params": p}, ids, attention_mask=mask)
        off = L.apply_lora(model, p, a, ids, attention_mask=mask, settings=settings, enabled=False)
        none = L.apply_lora(model, p, None, ids, attention_mask=mask, settings=settings)
        on = L.apply_lora(model, p, a, ids, attention_mask=mask, settings=settings)
        hidden = L.apply_lora(model, p, a, ids, attention_mask=mask, settings=settings, return_hidden=True)
        hidden_off = L.apply_lora(model, p, a, ids, attention_mask=mask, settings=settings, return_hidden=True,
                                  enabled=False)
        base_hidden = model.apply({"params": p}, ids, attention_mask=mask, return_hidden=True)
        return base, off, none, on, hidden @ M.lm_head_kernel(p, cfg), hidden_off, base_hidden

    base, off, none, on, from_hidden, hidden_off, base_hidden = (np.asarray(x) for x in run(params, adapters))
    np.testing.assert_array_equal(off, base)
    np.testing.assert_array_equal(none, base)
    np.testing.assert_array_equal(hidden_off, base_hidden)
    assert np.abs(on - base).max() > 1e-2
    np.testing.assert_allclose(from_hidden, on, atol=1e-5)


def test_dropout_only_touches_the_adapter_branch():
    cfg, model, params = _base("llama", num_hidden_layers=1)
    settings = L.LoraSettings(rank=4, alpha=8.0, dropout=0.5, target_modules=ALL)
    ids = jnp.asarray(_batch(cfg.vocab_size)[0])
    zero_b = L.init_lora(cfg, settings, 0)
    adapters = _random_adapters(cfg, settings)
    fn = jax.jit(lambda a, k: L.apply_lora(model, params, a, ids, settings=settings, dropout_rng=k))
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    base = np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids))(params))
    # B = 0: dropout has nothing to act on (equal up to XLA fusing the two programs differently)
    np.testing.assert_allclose(np.asarray(fn(zero_b, k1)), base, atol=1e-6)
    eval_out = np.asarray(jax.jit(lambda a: L.apply_lora(model, params, a, ids, settings=settings))(adapters))
    d1, d1b, d2 = (np.asarray(fn(adapters, k)) for k in (k1, k1, k2))
    np.testing.assert_array_equal(d1, d1b)
    assert np.abs(d1 - d2).max() > 1e-3 and np.abs(d1 - eval_out).max() > 1e-3
    # p -> 0 recovers the eval forward
    tiny = L.LoraSettings(rank=4, alpha=8.0, dropout=1e-9, target_modules=ALL)
    tiny_fn = jax.jit(lambda a, k: L.apply_lora(model, params, a, ids, settings=tiny, dropout_rng=k))
    np.testing.assert_allclose(np.asarray(tiny_fn(adapters, k1)), eval_out, atol=1e-5)


def test_sharded_adapters_match_single_device():
    assert jax.device_count() == 8, "tests/conftest.py forces 8 host devices"
    cfg, model, params = _base("mistral", num_hidden_layers=1)
    settings = L.LoraSettings(rank=4, alpha=8.0, target_modules=ALL)
    adapters = _random_adapters(cfg, settings)
    ids, mask = _batch(cfg.vocab_size, b=8, t=12)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def loss_and_logits(p, a, x, m):
        logits = L.apply_lora(model, p, a, x, attention_mask=m, settings=settings)
        return _lm_loss(logits, x, m), logits

    fn = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)
    (ref_loss, ref_logits), ref_grads = jax.jit(fn)(params, adapters, ids, mask)

    mesh = S.make_mesh(2, 2, 2)
    p_shard = S.logical_to_sharding(M.logical_axes(cfg), mesh)
    a_shard = S.logical_to_sharding(L.lora_logical_axes(cfg, settings), mesh)
    assert a_shard["layers_0"]["self_attn"]["q_proj"]["lora_a"].spec == jax.sharding.PartitionSpec("fsdp", None)
    assert a_shard["layers_0"]["self_attn"]["q_proj"]["lora_b"].spec == jax.sharding.PartitionSpec(None, "tensor", None)
    assert a_shard["layers_0"]["mlp"]["down_proj"]["lora_a"].spec == jax.sharding.PartitionSpec("tensor", None)
    placed_p, placed_a = jax.device_put(params, p_shard), jax.device_put(adapters, a_shard)
    batch = S.batch_sharding(mesh)
    with S.activation_rules(mesh):
        step = jax.jit(fn, in_shardings=(p_shard, a_shard, batch, batch), out_shardings=(None, a_shard))
        (loss, logits), grads = step(placed_p, placed_a, jax.device_put(ids, batch), jax.device_put(mask, batch))
    assert grads["layers_0"]["self_attn"]["o_proj"]["lora_a"].sharding.spec == jax.sharding.PartitionSpec(
        "tensor", None, None)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
    jax.tree_util.tree_map(lambda g, r: np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5),
                           grads, ref_grads)


# ---- 5: GQA / tied / bf16 base / remat -------------------------------------------------------------------


def test_bf16_base_with_float32_adapters_and_remat():
    cfg, model, params = _base("mistral", num_hidden_layers=1)
    settings = L.LoraSettings(rank=4, alpha=8.0, target_modules=ALL)
    adapters = _random_adapters(cfg, settings)
    ids, mask = _batch(cfg.vocab_size)
    loss = lambda mdl, p: jax.jit(jax.value_and_grad(lambda a: _lm_loss(
        L.apply_lora(mdl, p, a, jnp.asarray(ids), attention_mask=jnp.asarray(mask), settings=settings), ids, mask)))
    value, grads = loss(model, params)(adapters)

    remat = M.LlamaForCausalLM(cfg.replace(remat_policy="full"))
    value_r, grads_r = loss(remat, params)(adapters)
    np.testing.assert_allclose(float(value_r), float(value), rtol=1e-6)
    jax.tree_util.tree_map(lambda g, r: np.testing.assert_allclose(g, r, atol=1e-6), grads_r, grads)

    bf16 = M.LlamaForCausalLM(cfg.replace(dtype="bfloat16", param_dtype="bfloat16"))
    bf16_params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    value_b, grads_b = loss(bf16, bf16_params)(adapters)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads_b))
    assert abs(float(value_b) - float(value)) < 0.05 * abs(float(value))
    cos = lambda u, v: float(jnp.vdot(u, v) / (jnp.linalg.norm(u) * jnp.linalg.norm(v)))
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(t)])
    assert cos(flat(grads_b), flat(grads)) > 0.95
    merged = L.merge_lora(bf16_params, adapters, cfg, settings)
    assert merged["layers_0"]["self_attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16
    assert merged["embed_tokens"]["embedding"] is bf16_params["embed_tokens"]["embedding"]


def test_count_params_by_hand():
    cfg = CONFIGS["llama"]  # D=64, H=KV=4, hd=16, F=176, 2 layers
    qv = L.LoraSettings(rank=4, target_modules=("q_proj", "v_proj"))
    assert L.count_params(L.init_lora(cfg, qv, 0)) == 2 * 2 * (4 * 64 + 4 * 64)
    mistral = CONFIGS["mistral"]  # KV=2: k/v out = 32
    every = L.LoraSettings(rank=4, target_modules=ALL)
    per_layer = 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 176))
    assert L.count_params(L.init_lora(mistral, every, 0)) == 2 * per_layer
    assert L.count_params(M.init_params(cfg, 0)) == cfg.num_params()
    assert L.count_params(None) == 0 and L.init_lora(cfg, L.LoraSettings(rank=0), 0) is None


# ---- errors --------------------------------------------------------------------------------------------


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="lora.target_modules.*'lm_head'"):
        L.LoraSettings(rank=4, target_modules=("q_proj", "lm_head"))
    with pytest.raises(ConfigError, match="lora.rank"):
        L.LoraSettings(rank=-1)
    with pytest.raises(ConfigError, match="lora.dropout"):
        L.LoraSettings(rank=4, dropout=1.0)

    cfg, model, params = _base("llama")
    settings = L.LoraSettings(rank=4, target_modules=ALL)
    adapters = _random_adapters(cfg, settings)
    misplaced = {"layers_0": {"self_attn": {"qproj": adapters["layers_0"]["self_attn"]["q_proj"]}}}
    with pytest.raises(ValueError, match="layers_0/self_attn/qproj/lora_a"):
        L.apply_lora(model, params, misplaced, jnp.zeros((1, 4), jnp.int32), settings=settings)

    with pytest.raises(M.CheckpointError, match="does not exist"):
        L.load_peft_adapter(str(tmp_path / "nope"), cfg)
    out = L.save_peft_adapter(adapters, cfg, settings, str(tmp_path / "a"))
    with pytest.raises(M.CheckpointError, match=r"q_proj\.lora_A\.weight.*shape \(4, 64\).*\(4, 96\)"):
        L.load_peft_adapter(out, cfg.replace(hidden_size=96))
    conf = json.load(open(os.path.join(out, "adapter_config.json")))
    json.dump(conf | {"use_rslora": True}, open(os.path.join(out, "adapter_config.json"), "w"))
    with pytest.raises(M.CheckpointError, match="use_rslora"):
        L.load_peft_adapter(out, cfg)
    json.dump(conf, open(os.path.join(out, "adapter_config.json"), "w"))
    with pytest.raises(M.CheckpointError, match="not a LoRA weight of a 1-layer"):
        L.load_peft_adapter(out, cfg.replace(num_hidden_layers=1))
