"""Training core: sharded = single-device step, exact accumulation, resume, preemption, NaN stop, DPO learns,
reference cache, CLI errors."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import data as D
from jaxpref import models as M
from jaxpref import sharding as S
from jaxpref.configs_base import base_config
from jaxpref.train import StepFns, dpo_pair_loss, make_optimizer
from jaxpref.train.logging import read_metrics
from jaxpref.train.state import create_sharded_state, state_shardings
from helpers import trainer_from_config

TOK = "mistral"


def tiny_config(**train):
    c = base_config()
    c.model.preset = "tiny_llama"
    c.model.overrides = {"vocab_size": 32000}
    c.tokenizer.path = TOK
    c.data.train_path = "hh"
    c.data.max_rows = 64
    c.data.max_length = 96
    c.data.max_prompt_length = 64
    c.data.buckets = (48, 96)
    c.train.pairs_per_batch = 8
    c.train.num_steps = 6
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 0
    c.train.schedule = "constant"
    c.train.async_checkpointing = False
    c.export.hf = False
    c.mesh.num_devices = 1  # the 8 forced host devices are for the sharding tests; one is faster here
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def hh_pairs():
    tok = D.load_tokenizer(TOK)
    rows = D.load_preferences(D.SHIPPED_HH, skip_invalid=True, max_rows=32)
    return tok, D.tokenize_dataset(rows, tok, D.TokenizeOptions(max_length=96, max_prompt_length=64), progress=False)


def _setup(mesh, cfg):
    model = M.LlamaForCausalLM(M.preset("tiny_llama", vocab_size=32000))
    params = M.init_params(model.config, 0)
    tx, schedule = make_optimizer(cfg.train, 10)
    boxed = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    sh = state_shardings(boxed, tx, mesh)
    fns = StepFns(model, tx, schedule, dpo_pair_loss(cfg.loss), mesh=mesh, state_shardings=sh, reference="frozen")
    state = create_sharded_state(params, tx, jax.random.PRNGKey(0), sh)
    ref = jax.device_put(params, sh.params)
    return fns, state, ref


def _one_update(fns, state, ref, batches, mesh):
    from jaxpref.train.step import device_batch

    acc = fns.zero(state.params)
    for b in batches:
        acc = fns.accumulate(state.params, ref, acc, device_batch(b, mesh))
    state, metrics = fns.apply(state, acc)
    return jax.device_get(state.params), {k: float(v) for k, v in jax.device_get(metrics).items()}


def test_sharded_step_equals_single_device(hh_pairs):
    tok, pairs = hh_pairs
    cfg = tiny_config()
    def batch(score_groups):  # the LM head's response positions pooled per device shard (1 group or 4)
        options = D.BatchOptions(pairs_per_batch=8, buckets=(48, 96), score_groups=score_groups)
        return D.PairBatcher(pairs, options, pad_id=tok.pad_id).make_batch(list(range(8)))

    single = S.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    sharded = S.make_mesh(2, 2, 2)
    p1, m1 = _one_update(*_setup(single, cfg), [batch(1)], single)
    p8, m8 = _one_update(*_setup(sharded, cfg), [batch(4)], sharded)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(p8), jax.tree_util.tree_leaves(p1)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)  # float32 reductions in a different order


def test_gradient_accumulation_equals_large_batch(hh_pairs):
    tok, pairs = hh_pairs
    cfg = tiny_config()
    mesh = S.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    big = D.PairBatcher(pairs, D.BatchOptions(pairs_per_batch=8, buckets=(48, 96)), pad_id=tok.pad_id).make_batch(
        list(range(8)))
    small = D.PairBatcher(pairs, D.BatchOptions(pairs_per_batch=4, buckets=(48, 96)), pad_id=tok.pad_id)
    halves = [small.make_batch(list(range(4))), small.make_batch(list(range(4, 8)))]
    p_big, m_big = _one_update(*_setup(mesh, cfg), [big], mesh)
    p_acc, m_acc = _one_update(*_setup(mesh, cfg), halves, mesh)
    np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(p_acc), jax.tree_util.tree_leaves(p_big)):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5)
    # a zero-weight padding pair changes nothing
    padded = small.make_batch([0, 1, 2])
    assert padded["pair_weight"].tolist() == [1, 1, 1, 0]


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir)}


def test_kill_and_resume_reproduces_losses(tmp_path):
    cfg = tiny_config(num_steps=6, save_every=3)
    full = trainer_from_config(cfg, str(tmp_path / "full"), progress=False)
    full.fit()
    full.close()
    part = trainer_from_config(cfg, str(tmp_path / "part"), progress=False)
    part.fit(num_steps=3)  # "killed" after the checkpoint at step 3
    part.close()
    resumed = trainer_from_config(cfg, str(tmp_path / "part"), progress=False)
    assert resumed.fit()["step"] == 6
    resumed.close()
    a, b = _losses(str(tmp_path / "full")), _losses(str(tmp_path / "part"))
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        np.testing.assert_allclose(b[step], a[step], rtol=1e-6, err_msg=f"step {step}")


def test_sigterm_saves_and_stops(tmp_path):
    cfg = tiny_config(num_steps=6)
    t = trainer_from_config(cfg, str(tmp_path), progress=False)
    from jaxpref.train import preemption

    previous = preemption.handle_signals()  # what the CLI does for the whole run
    try:
        out = t.fit(on_step=lambda step, m: os.kill(os.getpid(), signal.SIGTERM) if step == 2 else None)
    finally:
        preemption.restore_signals(previous)
        preemption.clear()
    assert out["status"] == "preempted" and out["step"] == 2
    assert t.checkpointer.latest_step() == 2
    t.close()


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path):
    cfg = tiny_config(num_steps=6, save_every=2)
    t = trainer_from_config(cfg, str(tmp_path), progress=False)

    def poison(step, metrics):
        if step == 3:
            t.state = t.state.replace(params=jax.tree_util.tree_map(lambda x: x * jnp.nan, t.state.params))

    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step 4.*checkpoint \(step 2\).*intact"):
        t.fit(on_step=poison)
    assert t.checkpointer.latest_step() == 2
    t.close()
    again = trainer_from_config(cfg, str(tmp_path), progress=False)
    again.maybe_restore()
    assert int(again.state.step) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(again.state.params))
    again.close()


def test_dpo_learns_the_training_pairs(tmp_path):
    cfg = tiny_config(num_steps=30, learning_rate=3e-3)
    cfg.data.max_rows = 16
    t = trainer_from_config(cfg, str(tmp_path), progress=False)
    before = t.evaluate(t.batcher)
    t.fit()
    after = t.evaluate(t.batcher)
    t.close()
    assert before["rewards/accuracies"] == 0.0 and abs(before["loss"] - np.log(2)) < 1e-5  # policy == reference
    assert after["loss"] < 0.3 and after["rewards/accuracies"] > 0.9, after


def test_reference_cache_hit_and_equal_to_frozen(tmp_path):
    cfg = tiny_config(num_steps=2)
    cfg.reference.mode = "cached"
    cfg.reference.cache_dir = str(tmp_path / "cache")
    first = trainer_from_config(cfg, str(tmp_path / "a"), progress=False)
    assert not first.ref_cache.hit
    cfg_frozen = tiny_config(num_steps=2)
    frozen = trainer_from_config(cfg_frozen, str(tmp_path / "b"), progress=False)
    batch = first.batcher.make_batch(first.batcher.epoch_plan(0)[0])
    _, _, out_cached = first.step_fns.evaluate(first.state.params, None, first._to_device(batch))
    _, _, out_frozen = frozen.step_fns.evaluate(frozen.state.params, frozen.ref_params, frozen._to_device(batch))
    np.testing.assert_allclose(np.asarray(out_cached["ref_chosen"]), np.asarray(out_frozen["ref_chosen"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out_cached["ref_rejected"]), np.asarray(out_frozen["ref_rejected"]), rtol=1e-5)
    first.fit()
    frozen.fit()
    # reference log-probs of the train pairs after training: the cached table == a frozen pass == a fresh
    # placement of pi_0 (another pair list), and no longer the policy's
    from_table, from_frozen = first.reference_logps(), frozen.reference_logps()
    subset = first.reference_logps(first.pairs[:5])
    np.testing.assert_allclose(from_table, from_frozen, rtol=1e-5)
    np.testing.assert_allclose(subset, np.asarray(from_table)[:, :5], rtol=1e-5)
    assert not np.allclose(first.pair_logps(first.state.params, first.pairs)[0], from_table[0], rtol=1e-3)
    # with_reference: the policy's and the reference's log-probs from one call, equal to the separate calls
    for trainer, reference in ((first, from_table), (frozen, from_frozen)):
        policy, ref = trainer.pair_logps(trainer.state.params, trainer.pairs, with_reference=True)
        np.testing.assert_allclose(policy, trainer.pair_logps(trainer.state.params, trainer.pairs), rtol=1e-5)
        np.testing.assert_allclose(ref, reference, rtol=1e-5)
        assert not np.allclose(policy[0], ref[0], rtol=1e-3)
    first.close()
    frozen.close()
    second = trainer_from_config(cfg, str(tmp_path / "c"), progress=False)
    assert second.ref_cache.hit
    second.close()
    cfg.data.max_length = 80  # any input change gives a new key
    third = trainer_from_config(cfg, str(tmp_path / "d"), progress=False)
    assert not third.ref_cache.hit
    third.close()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxpref.main", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd or os.path.dirname(os.path.dirname(__file__)))


def test_cli_errors_are_one_line(tmp_path):
    cases = [
        (["--config=configs/dpo_tiny.py", "--config.algorithm=ppo"], "config.algorithm='ppo'"),
        (["--config=configs/dpo_llama2.py", "--config.model.hf_dir=/nonexistent/llama"], "does not exist"),
        (["--config=configs/ropo_mistral.py", "--config.model.hf_dir=/nonexistent/mistral"], "does not exist"),
        (["--config=configs/rcdpo_mistral.py"], "no such file"),
        (["--config=configs/rcdpo_mistral.py", "--config.data.train_path=hh"], "does not exist"),
        (["--config=configs/apo_llama2.py"], "golden"),
        (["--config=configs/apo_llama2.py", "--config.apo.golden_field=chosen"], "does not exist"),
        (["--config=configs/dpo_tiny.py", "--config.mesh.data=3"], "config.mesh"),
        (["--config=configs/dpo_tiny.py", "--config.model.overrides.vocab_size=1000"], "vocab_size is 1000"),
    ]
    for args, message in cases:
        out = _cli(*args, f"--workdir={tmp_path}/w", "--quiet")
        assert out.returncode == 2, (args, out.stderr[-2000:])
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr


def test_7b_recipe_dtypes_move_every_master_weight(tmp_path):
    """The 7B recipes compute in bf16 on float32 master weights: at their learning rate (5e-7) every weight moves
    in one step. With bf16 weights updated directly most updates are below half a bf16 ulp and are lost."""
    from jaxpref.configs_base import dpo_7b_config

    recipe = dpo_7b_config(hf_dir="/unused", tokenizer_path=TOK)
    assert (recipe.model.param_dtype, recipe.model.dtype) == ("float32", "bfloat16")
    moved = {}
    for param_dtype in ("float32", "bfloat16"):
        cfg = tiny_config(num_steps=1, learning_rate=recipe.train.learning_rate)
        cfg.model.dtype, cfg.model.param_dtype = recipe.model.dtype, param_dtype
        t = trainer_from_config(cfg, str(tmp_path / param_dtype), progress=False)
        before = jax.device_get(t.state.params)
        t.fit()
        after = jax.device_get(t.state.params)
        t.close()
        # (embedding rows of tokens absent from the batch get no gradient, so Adam leaves them alone in any dtype)
        leaves = [(a, b) for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before),
                                                 jax.tree_util.tree_leaves(after)) if "embed_tokens" not in str(path)]
        assert all(a.dtype == np.dtype(param_dtype) for a, _ in leaves)
        changed = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in leaves)
        moved[param_dtype] = changed / sum(a.size for a, _ in leaves)
    assert moved["float32"] > 0.99, moved
    assert moved["bfloat16"] < 0.2, moved


def test_cached_reference_evaluates_held_out_pairs_against_their_own_reference(tmp_path):
    """Held-out pairs are not in the cached (train-pair) table: with the policy still equal to the reference,
    every held-out reward is exactly 0 and the loss log 2, in cached mode as in frozen mode."""
    for mode in ("cached", "frozen"):
        cfg = tiny_config(num_steps=1, learning_rate=1e-30)
        cfg.data.eval_fraction = 0.25
        cfg.reference.mode = mode
        t = trainer_from_config(cfg, str(tmp_path / mode), progress=False)
        t.fit()
        ev = t.evaluate()
        t.close()
        assert abs(ev["loss"] - np.log(2)) < 1e-5 and abs(ev["rewards/margins"]) < 1e-5, (mode, ev)
