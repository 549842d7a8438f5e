"""LoRA training end to end: only adapters train on a frozen base that is also the reference; sharded = single
device; exact resume; cached = frozen reference; PEFT exports that PEFT and transformers load with the trained
policy's logits; ROPO, APO, reward-conditioned DPO and the reward model with LoRA through the CLI's path; the 7B LoRA recipe's sizes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import models as M
from jaxpref.configs_base import LORA_TARGETS, load_config_file, validate
from jaxpref.models import lora as L
from jaxpref.train.logging import read_metrics
from helpers import trainer_from_config

ROOT = os.path.dirname(os.path.dirname(__file__))
CONFIGS = os.path.join(ROOT, "configs")
ALL = tuple(L.TARGETS)


def _shrink(cfg, rank=4, targets=ALL):
    """The tiny real-data setup of tests/test_pipeline.py (32 HH rows, one bucket, one device) with LoRA on."""
    cfg.data.max_rows = 32
    cfg.data.eval_fraction = 0.0
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.buckets = 96, 64, (96,)
    cfg.train.save_every, cfg.train.warmup_steps, cfg.train.schedule = 1, 0, "constant"
    cfg.train.async_checkpointing = False
    cfg.mesh.num_devices = 1
    cfg.export.hf = False
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules = rank, 8.0, targets
    return cfg


def _tiny(num_steps=3, **lora):
    cfg = _shrink(load_config_file(os.path.join(CONFIGS, "dpo_tiny.py")))
    cfg.train.num_steps = num_steps
    for k, v in lora.items():
        cfg.lora[k] = v
    return cfg


def _host(tree):
    return jax.tree_util.tree_map(lambda x: np.array(jax.device_get(x)), tree)


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir)}


def _assert_same_training(workdir, trainer, expected_losses, expected_trainer, *, atol):
    """``workdir``'s losses equal ``expected_losses`` at every expected step (rtol 1e-5) and ``trainer``'s params
    equal ``expected_trainer``'s (``atol``)."""
    losses = _losses(workdir)
    for step in expected_losses:
        np.testing.assert_allclose(losses[step], expected_losses[step], rtol=1e-5, err_msg=f"step {step}")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol),
                           _host(trainer.state.params), _host(expected_trainer.state.params))


def _lora_count(cfg: M.ModelConfig, rank: int, targets) -> int:
    """``r * (d_in + d_out)`` per adapted projection, written out from the model's sizes."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    hd = cfg.head_dim or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    sizes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d), "gate_proj": (d, f),
             "up_proj": (d, f), "down_proj": (f, d)}
    return cfg.num_hidden_layers * sum(rank * sum(sizes[t]) for t in targets)


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """Three LoRA steps (frozen reference, adapters on all seven projections) with the base as it was before."""
    workdir = str(tmp_path_factory.mktemp("lora_frozen"))
    trainer = trainer_from_config(_tiny(), workdir, progress=False)
    base_before = _host(trainer.base)
    start = _host(trainer.state.params)
    trainer.fit()
    yield trainer, base_before, start, _losses(workdir)
    trainer.close()


def _base_logps(model, base, pairs, length=96):
    """Summed response log-probs of every pair under the plain base model, one unpadded sequence at a time
    (right-padded to ``length``, which a causal model cannot see): log-softmax of full logits, no step code."""
    fn = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({"params": base}, ids).astype(jnp.float32), -1))
    out = np.zeros((2, len(pairs)))
    for n, p in enumerate(pairs):
        for side, response in enumerate((p.chosen_ids, p.rejected_ids)):
            seq = np.concatenate([p.prompt_ids, response]).astype(np.int32)
            ids = np.zeros((1, length), np.int32)
            ids[0, :len(seq)] = seq
            logp = np.asarray(fn(jnp.asarray(ids)))[0]
            positions = np.arange(len(p.prompt_ids), len(seq))  # response tokens, predicted from position t - 1
            out[side, n] = logp[positions - 1, seq[positions]].astype(np.float64).sum()
    return out


def test_only_adapters_train_and_the_untouched_base_is_the_reference(frozen_run):
    trainer, base_before, start, _ = frozen_run
    runtime = trainer.runtime
    config = runtime.model.config
    # the train state is the adapters alone (float32), and so are the optimizer's moments
    assert list(trainer.state.params) == ["lora"]
    adapters = _host(trainer.state.params["lora"])
    n_adapters = _lora_count(config, 4, ALL)
    assert L.count_params(adapters) == n_adapters == runtime.param_counts()["trainable_params"]
    assert runtime.param_counts()["total_params"] == config.num_params() + n_adapters
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(trainer.state.opt_state) if np.ndim(x) > 0)
    assert L.count_params([x for x in jax.tree_util.tree_leaves(trainer.state.opt_state) if np.ndim(x) > 0]) \
        == 2 * n_adapters
    # fresh adapters: B = 0 (the policy starts as the base); after training every A and B has moved
    assert not any(np.any(b) for path, b in jax.tree_util.tree_leaves_with_path(start) if path[-1].key == "lora_b")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(adapters), jax.tree_util.tree_leaves(start["lora"])):
        assert np.abs(a - b).max() > 1e-6, path
    # the base is bit-identical after training
    jax.tree_util.tree_map(np.testing.assert_array_equal, _host(trainer.base), base_before)
    assert jax.tree_util.tree_structure(base_before) == jax.tree_util.tree_structure(M.init_params(config, 0))

    # the reference (adapters off) is the plain base model, in cached-style passes and in the frozen step
    pairs = trainer.pairs[:6]
    expected = _base_logps(runtime.model, base_before, pairs)
    ref = np.asarray(trainer.reference_logps(pairs))
    np.testing.assert_allclose(ref, expected, rtol=2e-6, atol=2e-4)
    policy, ref_in_step = trainer.pair_logps(trainer.state.params, pairs, with_reference=True)
    np.testing.assert_allclose(np.asarray(ref_in_step), expected, rtol=2e-6, atol=2e-4)
    assert np.abs(np.asarray(policy) - expected).max() > 1e-2  # and the trained policy is not the base
    # the merged params are the adapted policy as a plain model
    merged_logps = _base_logps(runtime.model, _host(trainer.merged_params()), pairs)
    np.testing.assert_allclose(np.asarray(policy), merged_logps, rtol=2e-6, atol=5e-4)


def test_cached_reference_with_lora_equals_frozen(frozen_run, tmp_path):
    frozen, _, _, frozen_losses = frozen_run
    cfg = _tiny()
    cfg.reference.mode = "cached"
    cached = trainer_from_config(cfg, str(tmp_path), progress=False)
    assert not cached.ref_cache.hit
    # the table was computed with the adapters off: the base's log-probs, equal to the frozen step's reference
    _, frozen_ref = frozen.pair_logps(frozen.state.params, frozen.pairs, with_reference=True)
    np.testing.assert_allclose(np.asarray(cached.reference_logps()), np.asarray(frozen_ref), rtol=1e-5)
    cached.fit()
    assert sorted(_losses(str(tmp_path))) == sorted(frozen_losses) == [1, 2, 3]
    _assert_same_training(str(tmp_path), cached, frozen_losses, frozen, atol=1e-5)
    cached.close()


def test_sharded_lora_equals_single_device(frozen_run, tmp_path):
    assert jax.device_count() == 8, "tests/conftest.py forces 8 host devices"
    single, _, _, single_losses = frozen_run
    cfg = _tiny()
    cfg.mesh.num_devices, cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 0, 2, 2, 2
    sharded = trainer_from_config(cfg, str(tmp_path), progress=False)
    lora = sharded.state.params["lora"]["layers_0"]
    assert lora["self_attn"]["q_proj"]["lora_a"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert lora["self_attn"]["o_proj"]["lora_a"].sharding.spec == jax.sharding.PartitionSpec("tensor", None, None)
    assert lora["mlp"]["up_proj"]["lora_b"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    assert sharded.base["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
        "fsdp", "tensor")
    sharded.fit()
    _assert_same_training(str(tmp_path), sharded, single_losses, single, atol=1e-4)
    sharded.close()


def test_kill_and_resume_equals_uninterrupted_with_dropout(frozen_run, tmp_path):
    """LoRA dropout on: the per-step keys come from the saved state, so a resumed run draws the same masks."""
    _, _, _, no_dropout = frozen_run
    cfg = _tiny(num_steps=3, dropout=0.3)
    full = trainer_from_config(cfg, str(tmp_path / "full"), progress=False)
    full.fit()
    full.close()
    part = trainer_from_config(cfg, str(tmp_path / "part"), progress=False)
    part.fit(num_steps=2)  # "killed" after the checkpoint of step 2
    part.close()
    # the checkpoint holds the adapters, their optimizer state and the data position -- not the base
    ckpt = tmp_path / "part" / "checkpoints" / "2"
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert ckpt_bytes < 0.05 * 4 * M.preset("tiny_llama", vocab_size=32000).num_params(), ckpt_bytes
    resumed = trainer_from_config(cfg, str(tmp_path / "part"), progress=False)
    assert resumed.fit()["step"] == 3
    resumed.close()
    a, b = _losses(str(tmp_path / "full")), _losses(str(tmp_path / "part"))
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=1e-6, err_msg=f"step {step}")
    # dropout acts on the adapter branch only: with B = 0 the first step equals the run without dropout, later not
    np.testing.assert_allclose(a[1], no_dropout[1], rtol=1e-6)
    assert abs(a[2] - no_dropout[2]) > 1e-6


def test_peft_adapter_and_merged_export_reproduce_the_trained_policy(tmp_path):
    import peft
    import torch
    import transformers

    from hf_fixtures import hf_logits, tiny_hf_model

    base_dir = str(tmp_path / "base")
    tiny_hf_model("mistral", seed=3, vocab_size=32000).save_pretrained(base_dir)
    cfg = _tiny(num_steps=3)
    cfg.model.preset, cfg.model.hf_dir, cfg.model.overrides = "", base_dir, {}
    cfg.export.hf = True
    trainer = trainer_from_config(cfg, str(tmp_path / "run"), progress=False)
    out = trainer.maybe_export(trainer.fit())
    assert set(out) == {"hf_export", "hf_adapter"}
    adapter_cfg = json.load(open(os.path.join(out["hf_adapter"], "adapter_config.json")))
    assert os.path.realpath(adapter_cfg["base_model_name_or_path"]) == os.path.realpath(base_dir)
    assert adapter_cfg["r"] == 4 and sorted(adapter_cfg["target_modules"]) == sorted(ALL)

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    peft_model = peft.PeftModel.from_pretrained(hf_base, out["hf_adapter"]).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 32000, (3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, :4] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    runtime = trainer.runtime
    ours = np.asarray(L.apply_lora(runtime.model, trainer.base, trainer.state.params["lora"], jnp.asarray(ids),
                                   attention_mask=jnp.asarray(mask), settings=runtime.lora))
    theirs = hf_logits(peft_model, ids, mask)
    diff = lambda u, v: float((np.abs(u - v) * mask[..., None]).max())  # noqa: E731
    assert diff(ours, theirs) <= 1e-4, diff(ours, theirs)
    with peft_model.disable_adapter():
        assert diff(hf_logits(peft_model, ids, mask), theirs) > 1e-3  # the trained adapters matter
    merged = transformers.AutoModelForCausalLM.from_pretrained(out["hf_export"], dtype=torch.float32).eval()
    assert diff(hf_logits(merged, ids, mask), theirs) <= 1e-4

    # the training step's own log-probs (fused LM head over response positions) are PEFT's
    pairs = trainer.pairs[:4]
    chosen, rejected = trainer.pair_logps(trainer.state.params, pairs)
    for n, p in enumerate(pairs):
        for response, got in ((p.chosen_ids, chosen[n]), (p.rejected_ids, rejected[n])):
            seq = np.concatenate([p.prompt_ids, response])[None]
            with torch.no_grad():
                logits = peft_model(input_ids=torch.tensor(seq)).logits[0].double()
            logp = torch.log_softmax(logits, -1).numpy()
            positions = np.arange(len(p.prompt_ids), seq.shape[1])
            assert abs(logp[positions - 1, seq[0, positions]].sum() - got) < 2e-3
    trainer.close()


@pytest.mark.parametrize("base", ["hf_dir", "preset"])
def test_a_lora_checkpoint_step_exports_merged_onto_the_runs_base(base, tmp_path):
    """flax-to-hf of a LoRA run's checkpoint: the final step's export equals the run's own merged and PEFT exports
    bit for bit (the base rebuilt from the run's config: an HF directory, or the preset's seeded init); an earlier
    step exports other weights."""
    from safetensors.numpy import load_file

    from hf_fixtures import tiny_hf_model
    from jaxpref.convert import main as convert_main
    from jaxpref.pipeline import run

    cfg = _tiny(num_steps=3)
    if base == "hf_dir":
        base_dir = str(tmp_path / "base")
        tiny_hf_model("mistral", seed=3, vocab_size=32000).save_pretrained(base_dir)
        cfg.model.preset, cfg.model.hf_dir, cfg.model.overrides = "", base_dir, {}
    cfg.export.hf = True
    workdir = str(tmp_path / "run")
    run(cfg, workdir, progress=False)
    for step in (3, 2):  # keep_checkpoints=2: steps 2 and 3 remain
        assert convert_main(["flax-to-hf", "--src", workdir, "--step", str(step), "--dst", str(tmp_path / f"s{step}")]) == 0
    final, step3, step2 = (load_file(os.path.join(d, "model.safetensors")) for d in
                           (os.path.join(workdir, "hf_export"), tmp_path / "s3", tmp_path / "s2"))
    assert set(final) == set(step3)
    for k in final:
        np.testing.assert_array_equal(step3[k], final[k], err_msg=k)
    assert any(not np.array_equal(step2[k], final[k]) for k in final if "q_proj" in k)
    adapter, adapter3 = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in
                         (os.path.join(workdir, "hf_adapter"), tmp_path / "s3" / "adapter"))
    assert set(adapter) == set(adapter3) and all(np.array_equal(adapter[k], adapter3[k]) for k in adapter)


def test_7b_lora_recipe_sizes_and_lowering():
    """``configs/dpo_mistral_lora.py`` and ``--config.lora.rank=16`` on any 7B config: PEFT's well-known count for
    Mistral-7B with r = 16 on all seven projections (41,943,040 trainable of 7,283,675,136); the steps lower with
    the abstract frozen base as their second argument (what ``python -m jaxpref.aot`` compiles)."""
    from jaxpref.train.runtime import Runtime

    recipe = load_config_file(os.path.join(CONFIGS, "dpo_mistral_lora.py"))
    validate(recipe)
    assert (recipe.lora.rank, recipe.lora.alpha, tuple(recipe.lora.target_modules)) == (16, 32.0, LORA_TARGETS)
    assert recipe.model.param_dtype == "bfloat16" and 5e-6 <= recipe.train.learning_rate <= 1e-5
    assert LORA_TARGETS == ALL
    for name in ("dpo_mistral_lora.py", "ropo_llama2.py"):
        cfg = load_config_file(os.path.join(CONFIGS, name))
        cfg.lora.rank, cfg.lora.target_modules = 16, LORA_TARGETS
        cfg.model.hf_dir, cfg.tokenizer.path, cfg.mesh.num_devices = "", "mistral", 1
        validate(cfg)
        counts = Runtime.build(cfg).param_counts()
        expected = _lora_count(M.preset(cfg.model.preset), 16, LORA_TARGETS)
        assert counts["trainable_params"] == expected
        if name != "ropo_llama2.py":
            assert (counts["trainable_params"], counts["total_params"]) == (41_943_040, 7_283_675_136)

    # lowering with abstract inputs (dropout on, as in the recipe), on the tiny model (a 7B step lowers slowly here)
    cfg = _tiny(dropout=0.05)
    runtime = Runtime.build(cfg)
    tx, schedule = runtime.optimizer(10)
    steps = runtime.steps(lambda c, r, rc, rr, b: (-(c - r), c - rc, r - rr), tx, schedule, reference="frozen")
    from jaxpref.train.state import TrainState

    abstract_state = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.PRNGKey(0)), runtime.abstract_params())
    abstract_state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                            abstract_state, runtime.state_shardings(tx))
    lowered = steps.lower(abstract_state, runtime.abstract_batch())
    frozen = runtime.abstract_frozen_params()
    assert frozen is not None and L.count_params(frozen) == runtime.model.config.num_params()
    assert L.count_params(runtime.abstract_model_params()) == runtime.model.config.num_params()  # what sampling takes
    assert list(abstract_state.params) == ["lora"]
    args = lowered["accumulate"].args_info[0]
    assert jax.tree_util.tree_structure(args[1]) == jax.tree_util.tree_structure(frozen)
    assert "lora" not in args[1]


def _pipeline_cfg(name, **overrides):
    cfg = _shrink(load_config_file(os.path.join(CONFIGS, name)), targets=("q_proj", "v_proj"))
    cfg.export.hf = True
    for key, value in overrides.items():
        section, leaf = key.split("__")
        cfg[section][leaf] = value
    return cfg


def test_ropo_with_lora_end_to_end(tmp_path):
    from jaxpref.pipeline import run

    cfg = _pipeline_cfg("ropo_tiny.py", data__max_rows=16, train__num_steps=2, ropo__rounds=2,
                        ropo__max_new_tokens=4, ropo__num_candidates=2)
    result = run(cfg, str(tmp_path), progress=False)
    stored = json.loads((tmp_path / "results.json").read_text())
    n = _lora_count(M.preset("tiny_llama"), 4, ("q_proj", "v_proj"))
    assert stored["trainable_params"] == n < stored["total_params"] == n + M.preset("tiny_llama", vocab_size=32000).num_params()
    assert os.path.isdir(result["hf_export"]) and os.path.isfile(os.path.join(result["hf_adapter"], "adapter_config.json"))
    record = json.loads((tmp_path / "round_0" / "round.json").read_text())
    assert record["discarded_ids"] and len(stored["rounds"]) == 1 and stored["step"] == 2


def test_apo_with_lora_end_to_end_shares_one_base(tmp_path, monkeypatch):
    from jaxpref.pipeline import run

    sessions = _record_sessions(monkeypatch)
    cfg = _pipeline_cfg("apo_tiny.py", data__max_rows=24, train__num_steps=2, apo__rounds=1, apo__max_new_tokens=4)
    cfg.reward_model.train.num_steps = 2
    result = run(cfg, str(tmp_path), progress=False)
    policy = [t for t in sessions if t.workdir.endswith("policy")]
    rm = [t for t in sessions if t.workdir.endswith("rm")]
    assert len(policy) == len(rm) == 1
    policy, rm = policy[0], rm[0]
    # two adapter sets with their own optimizers; the RM's head trains too
    assert list(policy.state.params) == ["lora"] and sorted(rm.state.params) == ["lora", "score"]
    assert list(rm.state.params["lora"]) == ["backbone"]
    # one copy of the SFT weights: the RM's frozen backbone is the policy's placed base, array for array
    backbone = rm.base["backbone"]
    assert sorted(backbone) == sorted(k for k in policy.base if k != "lm_head") and "score" not in rm.base
    for key in backbone:
        for a, b in zip(jax.tree_util.tree_leaves(backbone[key]), jax.tree_util.tree_leaves(policy.base[key])):
            assert a is b, key
    tiny = M.preset("tiny_llama", vocab_size=32000)
    n = _lora_count(tiny, 4, ("q_proj", "v_proj"))
    assert (result["trainable_params"], result["total_params"]) == (n, n + tiny.num_params())
    assert result["rm_trainable_params"] == n + tiny.hidden_size < result["rm_total_params"]
    for key in ("hf_export", "hf_export_rm"):
        assert os.path.isfile(os.path.join(result[key], "config.json")), key
    assert os.path.isfile(os.path.join(result["hf_adapter"], "adapter_model.safetensors"))


def _record_sessions(monkeypatch):
    """Every Trainer built from now on, in order (their state stays readable after the run closes them)."""
    from jaxpref.train import trainer as trainer_mod

    sessions = []
    original = trainer_mod.Trainer.__init__

    def record(self, *a, **k):
        original(self, *a, **k)
        sessions.append(self)

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", record)
    return sessions


def test_reward_conditioned_with_lora_two_passes_on_one_base_and_an_adapter_as_implicit_policy(tmp_path, monkeypatch):
    """Reward-conditioned DPO with implicit scores under LoRA: the implicit-score DPO pass and the conditioned pass
    each train adapters only, on one placed base (array for array); a PEFT adapter directory then serves as
    ``implicit_policy_dir`` (its scores spread over the scale: fresh B = 0 adapters would give every response
    the same implicit reward, hence one score), and an adapter of another rank is one clear error."""
    from jaxpref.algorithms import reward_conditioned as RC
    from jaxpref.errors import ConfigError
    from jaxpref.pipeline import run

    sessions = _record_sessions(monkeypatch)
    cfg = _pipeline_cfg("rcdpo_tiny.py", data__max_rows=16, train__num_steps=2)
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.buckets = 256, 160, (256,)
    result = run(cfg, str(tmp_path / "a"), progress=False)
    implicit = [t for t in sessions if t.workdir.endswith("implicit_dpo")]
    main = [t for t in sessions if t.workdir == str(tmp_path / "a")]
    assert len(implicit) == len(main) == 1
    implicit, main = implicit[0], main[0]
    assert list(implicit.state.params) == ["lora"] == list(main.state.params)
    assert int(jax.device_get(implicit.state.step)) == 2 == int(jax.device_get(main.state.step))
    for a, b in zip(jax.tree_util.tree_leaves(implicit.base), jax.tree_util.tree_leaves(main.base)):
        assert a is b
    n = _lora_count(M.preset("tiny_llama"), 4, ("q_proj", "v_proj"))
    assert result["trainable_params"] == n and result["num_augmented_pairs"] == 2 * result["num_rows"]
    adapter_dir = result["hf_adapter"]
    assert os.path.isfile(os.path.join(adapter_dir, "adapter_config.json"))

    scored = []
    original = RC.implicit_scores
    monkeypatch.setattr(RC, "implicit_scores", lambda *a, **k: scored.append(original(*a, **k)) or scored[-1])
    cfg.reward_conditioned.implicit_policy_dir = adapter_dir
    run(cfg, str(tmp_path / "b"), progress=False)
    second = [t for t in sessions if t.workdir.endswith(os.path.join("b", "implicit_dpo"))][0]
    assert int(jax.device_get(second.state.step)) == 0  # the adapter was loaded, not trained again
    scores = {s for r in scored[0] for s in (r["score_chosen"], r["score_rejected"])}
    assert len(scores) >= 3, scores

    cfg.lora.rank = 8
    with pytest.raises(ConfigError, match="rank 4"):
        run(cfg, str(tmp_path / "c"), progress=False)


def test_reward_model_with_lora_exports_a_merged_model_that_scores_like_the_trained_one(tmp_path, monkeypatch):
    """A standalone reward model under LoRA trains its adapters and head only, on the policy's frozen decoder; the
    merged ``LlamaForSequenceClassification`` export scores the training pairs in transformers as jaxpref's trained
    adapters do (each sequence alone, fp32, 1e-4)."""
    import torch
    import transformers

    from jaxpref.pipeline import run

    sessions = _record_sessions(monkeypatch)
    cfg = _pipeline_cfg("rm_tiny.py", data__max_rows=16)
    cfg.reward_model.train.num_steps = 3
    result = run(cfg, str(tmp_path), progress=False)
    (rm,) = sessions
    assert sorted(rm.state.params) == ["lora", "score"] and list(rm.state.params["lora"]) == ["backbone"]
    tiny = M.preset("tiny_llama")
    assert result["trainable_params"] == _lora_count(tiny, 4, ("q_proj", "v_proj")) + tiny.hidden_size
    chosen, rejected = rm.pair_logps(rm.state.params, rm.pairs)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(result["hf_export"], dtype=torch.float32).eval()
    theirs = []
    for p in rm.pairs:
        for response in (p.chosen_ids, p.rejected_ids):
            ids = torch.tensor(np.concatenate([p.prompt_ids, response]).astype(np.int64)[None])
            with torch.no_grad():
                theirs.append(float(hf(input_ids=ids).logits[0, 0]))
    ours = np.stack([np.asarray(chosen), np.asarray(rejected)], 1).reshape(-1)
    assert np.ptp(ours) > 1e-3  # the trained head and adapters give different scores
    np.testing.assert_allclose(np.asarray(theirs), ours, atol=1e-4, rtol=0)
