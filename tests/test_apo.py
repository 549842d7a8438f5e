"""Reward model and APO (*adversarial* preference optimization): loss by hand, read-out position, transformers
parity of the scalar head, one tiny game with resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import data as D
from jaxpref.configs_base import load_config_file
from jaxpref.losses import adversarial_rm_loss, adversarial_rm_pair_losses, adversarial_rm_pair_weights
from jaxpref.models import reward as R
from jaxpref.tasks import synthetic as S

from helpers import preempt_during, run_algorithm

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _ls(x):  # -log sigmoid(x), by hand
    return float(np.log1p(np.exp(-x)))


def test_adversarial_rm_loss_hand_computed():
    chosen = np.array([1.0, 0.5, 2.0, 0.0, 1.5, 3.0])
    rejected = np.array([0.0, 1.5, 1.0, 1.0, 0.5, 0.0])
    adv = np.array([0, 0, 1, 1, 1, 1], bool)  # 2 human pairs, 1 prompt x K=4 adversarial pairs
    # margins chosen - rejected: 1, -1, 1, -1, 1, 3
    human = (_ls(1.0) + _ls(-1.0)) / 2
    adv_rank = (_ls(1.0) + _ls(-1.0) + _ls(1.0) + _ls(3.0)) / 4  # (c_apo / K) * sum over one prompt
    for rank_w, apo_w in ((1.0, 0.1), (0.5, 2.0)):
        got = float(adversarial_rm_loss(chosen, rejected, adv, rank_weight=rank_w, apo_weight=apo_w,
                                        samples_per_prompt=4))
        assert got == pytest.approx(rank_w * human + apo_w * adv_rank, rel=1e-6)
        got_diff = float(adversarial_rm_loss(chosen, rejected, adv, rank_weight=rank_w, apo_weight=apo_w, form="diff"))
        assert got_diff == pytest.approx(rank_w * human + apo_w * (-(1 - 1 + 1 + 3) / 4), rel=1e-6)
    # two prompts x K=2: (c_apo / K) * (1/P) * sum = c_apo * mean
    two = float(adversarial_rm_loss(chosen[2:], rejected[2:], adv[2:], apo_weight=0.1, samples_per_prompt=2))
    assert two == pytest.approx(0.1 * adv_rank, rel=1e-6)
    # base RM (apo_weight 0) = plain Bradley-Terry mean; no human term (rank_weight 0) = adversarial term only
    assert float(adversarial_rm_loss(chosen, rejected, adv, apo_weight=0.0)) == pytest.approx(human, rel=1e-6)
    assert float(adversarial_rm_loss(chosen, rejected, adv, rank_weight=0.0, apo_weight=1.0)) == pytest.approx(
        adv_rank, rel=1e-6)
    # padding rows do not count
    mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    padded = float(adversarial_rm_loss(np.append(chosen, 9.0), np.append(rejected, -9.0), np.append(adv, True),
                                       mask=mask))
    assert padded == pytest.approx(human + 0.1 * adv_rank, rel=1e-6)
    with pytest.raises(ValueError):
        adversarial_rm_pair_losses(chosen, rejected, adv, form="wgan")
    w = np.asarray(adversarial_rm_pair_weights(adv, rank_weight=1.0, apo_weight=0.1))
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.025, 0.025, 0.025, 0.025])


@pytest.mark.parametrize("form", ["ranking", "diff"])
def test_adversarial_gradient_raises_golden_and_lowers_sample(form):
    golden = jnp.array([0.3, -0.2])
    sample = jnp.array([0.1, 0.4])
    adv = jnp.array([True, True])
    g_gold, g_sample = jax.grad(lambda a, b: adversarial_rm_loss(a, b, adv, form=form), argnums=(0, 1))(golden, sample)
    # gradient descent moves against the gradient: golden up (negative grad), sample down (positive grad)
    assert (np.asarray(g_gold) < 0).all() and (np.asarray(g_sample) > 0).all()


def _rm(seed=0, **kw):
    from jaxpref import models as M

    cfg = M.ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, **kw)
    lm = M.init_params(cfg, seed)
    return R.RewardModel(cfg), R.from_causal_lm(lm, cfg, seed=seed + 1)


@pytest.mark.parametrize("packing", [False, True])
def test_reward_read_at_the_last_response_token(packing):
    model, params = _rm()
    pairs = [D.TokenizedPair(0, "a", np.array([1, 5, 6]), np.array([7, 8, 2]), np.array([9, 2])),
             D.TokenizedPair(1, "b", np.array([1, 10]), np.array([11, 12, 13, 14, 2]), np.array([15, 2])),
             D.TokenizedPair(2, "c", np.array([1, 20, 21, 22, 23]), np.array([2]), np.array([24, 25, 2]))]
    opts = D.BatchOptions(pairs_per_batch=4, buckets=(16,) if packing else (8, 16), packing=packing, shuffle=False,
                          rows_per_batch=3 if packing else None)
    batcher = D.PairBatcher(pairs, opts, pad_id=2)  # pad id == EOS: the read-out must not rely on pad ids
    batch = batcher.make_batch(batcher.epoch_plan(0)[0])
    from jaxpref.train.step import Batch

    batch = jax.tree_util.tree_map(jnp.asarray, Batch.from_host(batch))
    chosen, rejected = R.sequence_rewards(params, model, batch)
    for n, p in enumerate(pairs):
        for got, resp in ((chosen[n], p.chosen_ids), (rejected[n], p.rejected_ids)):
            seq = np.concatenate([p.prompt_ids, resp])[None]
            alone = model.apply({"params": params}, jnp.asarray(seq))[0]
            assert float(got) == pytest.approx(float(alone[-1]), abs=1e-5)
    assert float(chosen[3]) == 0.0 and float(rejected[3]) == 0.0  # the padding pair


def test_reward_model_matches_transformers_sequence_classification(tmp_path):
    import torch
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0,
                                      max_position_embeddings=64, tie_word_embeddings=False)
    hf = transformers.LlamaForSequenceClassification(hf_cfg).eval()
    with torch.no_grad():
        hf.score.weight.normal_()
    hf.save_pretrained(tmp_path / "hf")
    model, params = R.from_pretrained(str(tmp_path / "hf"))
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])  # right padded: HF reads the last non-pad token
    mask = (ids != 0).astype(np.int32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    got = np.array([ours[0, 5], ours[1, 2]])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # ours -> HF directory -> transformers: identical scores
    R.save_pretrained(model, params, str(tmp_path / "out"))
    back = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    np.testing.assert_allclose(again, ref, atol=1e-6)
    with pytest.raises(Exception, match="score.weight|sequence-classification"):
        from jaxpref import models as M

        M.save_pretrained(M.LlamaForCausalLM(model.config), M.init_params(model.config, 0), str(tmp_path / "lm"))
        R.from_pretrained(str(tmp_path / "lm"))


def _tiny_apo_cfg():
    cfg = load_config_file(os.path.join(CONFIGS, "apo_synthetic.py"))
    cfg.task.num_sft_prompts, cfg.task.sft_steps = 256, 40
    cfg.task.num_pair_prompts, cfg.task.num_eval_prompts, cfg.task.num_policy_prompts = 32, 16, 32
    cfg.task.hidden = 32
    cfg.apo.rounds = 2
    cfg.apo.samples_per_prompt = 2
    cfg.train.num_epochs = 1.0
    cfg.train.save_every = 1
    cfg.reward_model.train.num_epochs = 1.0
    cfg.reward_model.train.save_every = 1
    return cfg


@pytest.fixture(scope="module")
def tiny_apo():
    from jaxpref.tasks import gold

    cfg = _tiny_apo_cfg()
    return cfg, gold.build_task_data(cfg, 0)


def test_one_game_changes_both_states_and_resumes_mid_round(tiny_apo, tmp_path, monkeypatch):
    from jaxpref.algorithms import apo

    cfg, td = tiny_apo
    full, _ = run_algorithm(cfg, str(tmp_path / "full"), task_data=td)
    assert [r["round"] for r in full["rounds"]] == [1, 2]
    for r in full["rounds"]:
        for key in ("gold_reward", "rm_accuracy", "rm_golden_accuracy", "kl"):
            assert np.isfinite(r[key]), key
    # the combined checkpoint holds both states, and both moved away from their starting points
    from jaxpref.pipeline import task_inputs
    from jaxpref.train.runtime import Runtime

    inputs = task_inputs(cfg, task_data=td)
    game = apo.Game(Runtime.build(cfg, model=inputs.model, tokenizer=inputs.tokenizer), str(tmp_path / "full"), inputs,
                    progress=False)
    policy_params, rm_params, records = game._restore_round(1)
    assert records == full["rounds"]
    moved = lambda a, b: max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree_util.tree_leaves(a),  # noqa: E731
                                                                      jax.tree_util.tree_leaves(b)))
    assert moved(policy_params, td.sft_params) > 1e-4
    assert moved(rm_params, game.rm_base) > 1e-4
    # a run killed inside round 1 (after its RM, before its policy pairs) resumes to the same result
    calls = {"n": 0}
    real = apo.Game.policy_rows

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **kw)

    monkeypatch.setattr(apo.Game, "policy_rows", dying)
    with pytest.raises(KeyboardInterrupt):
        run_algorithm(cfg, str(tmp_path / "resumed"), task_data=td)
    monkeypatch.setattr(apo.Game, "policy_rows", real)
    resumed, _ = run_algorithm(cfg, str(tmp_path / "resumed"), task_data=td)
    assert len(resumed["rounds"]) == len(full["rounds"])
    for a, b in zip(resumed["rounds"], full["rounds"]):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert (json.loads((tmp_path / "resumed" / "round_1" / "policy_pairs.json").read_text())
            == json.loads((tmp_path / "full" / "round_1" / "policy_pairs.json").read_text()))
    # SIGTERM inside round 0's reward-model training: the RM phase saves and stops, nothing downstream runs on the
    # half-trained RM (no policy pairs, no round checkpoint), and the re-run equals the uninterrupted game
    preempt_during(monkeypatch, os.path.join("round_0", "rm"), 1,
                   lambda: run_algorithm(cfg, str(tmp_path / "sigterm"), task_data=td), match="reward-model training")
    assert not (tmp_path / "sigterm" / "round_0" / "policy_pairs.json").exists()
    assert not (tmp_path / "sigterm" / "checkpoints" / "0").exists()
    again, _ = run_algorithm(cfg, str(tmp_path / "sigterm"), task_data=td)
    for a, b in zip(again["rounds"], full["rounds"]):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_standalone_reward_model_and_apo_on_real_text(tmp_path):
    """``configs/rm_tiny.py`` (held-out accuracy, HF export that transformers loads) and ``configs/apo_tiny.py``
    (both exports) through ``jaxpref.pipeline.run`` (the CLI's path), shortened; a missing golden field is a one-line DataError."""
    import transformers

    from jaxpref.pipeline import run

    cfg = load_config_file(os.path.join(CONFIGS, "rm_tiny.py"))
    cfg.data.max_rows = 48
    cfg.reward_model.train.num_steps = 3
    r = run(cfg, str(tmp_path / "rm"), progress=False)
    assert 0.0 <= r["accuracy"] <= 1.0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(r["hf_export"])
    assert hf.config.num_labels == 1
    cfg = load_config_file(os.path.join(CONFIGS, "apo_tiny.py"))
    cfg.data.max_rows = 24
    cfg.train.num_steps = cfg.reward_model.train.num_steps = 2
    cfg.apo.rounds = 1
    cfg.apo.max_new_tokens = 4
    r = run(cfg, str(tmp_path / "apo"), progress=False)
    assert len(r["rounds"]) == 1 and os.path.isdir(r["hf_export"]) and os.path.isdir(r["hf_export_rm"])
    cfg.apo.golden_field = "golden"
    with pytest.raises(D.DataError, match="golden"):
        run(cfg, str(tmp_path / "apo2"), progress=False)


@pytest.mark.parametrize("rank_weight,apo_weight", [(1.0, 0.1), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_training_weights_reduce_to_the_apo_objective(rank_weight, apo_weight):
    """The RM trains with per-pair weights ``rm_weights`` and the step's ``sum w l / sum w``; over all pairs this is
    exactly ``adversarial_rm_loss / (rank_weight + apo_weight)`` (the objective up to a constant)."""
    from jaxpref.algorithms.reward_model import ADVERSARIAL, HUMAN, rm_weights

    rng = np.random.default_rng(0)
    groups = np.array([HUMAN] * 7 + [ADVERSARIAL] * 12)
    chosen, rejected = rng.normal(size=19), rng.normal(size=19)
    w = rm_weights(groups, rank_weight=rank_weight, apo_weight=apo_weight)
    losses = np.asarray(adversarial_rm_pair_losses(chosen, rejected, groups == ADVERSARIAL))
    trained = float(np.sum(w * losses) / np.sum(w))
    objective = float(adversarial_rm_loss(chosen, rejected, groups == ADVERSARIAL, rank_weight=rank_weight,
                                          apo_weight=apo_weight, samples_per_prompt=4))
    active = (rank_weight if (groups == HUMAN).any() else 0) + (apo_weight if (groups == ADVERSARIAL).any() else 0)
    assert trained * active == pytest.approx(objective, rel=1e-6)
    if apo_weight == 0:
        assert (w[groups == ADVERSARIAL] == 0).all()  # the base RM: same batches, adversarial pairs weigh nothing


def test_policy_pairs_take_the_best_and_worst_scored_samples(monkeypatch):
    """APO's policy step pairs the RM's highest-scored sample (chosen) with its lowest (rejected)."""
    from types import SimpleNamespace

    from jaxpref.algorithms import apo

    tok = D.load_tokenizer("int:32")
    opts = D.TokenizeOptions(max_length=24, max_prompt_length=8)
    value = {" 5": 0.2, " 6": 0.9, " 7": -0.4, " 8": 0.1}  # the fake RM's score of each response

    def pair_logps(params, pairs):
        text = lambda ids: " " + " ".join(str(int(t)) for t in ids if int(t) != tok.eos_id)  # noqa: E731
        return (np.array([value[text(p.chosen_ids)] for p in pairs]),
                np.array([value[text(p.rejected_ids)] for p in pairs]))

    rm = SimpleNamespace(tokenizer=tok, tok_options=opts, state=SimpleNamespace(params=None), pair_logps=pair_logps)
    game = object.__new__(apo.Game)
    game.cfg = _tiny_apo_cfg()
    game.policy_prompts = [{"id": "p", "prompt": "3 4"}]
    monkeypatch.setattr(game, "_sample", lambda *a, **k: [[" 5", " 6", " 7", " 8"]], raising=False)
    gold = {" 5": 0.5, " 6": 1.0, " 7": 0.0, " 8": 0.6}  # the task's true reward: " 8" beats " 5", the RM disagrees
    game.gold_reward = lambda prompt, response: gold[response]
    (row,), agreement = game.policy_rows(None, rm, 0)
    assert (row["chosen"], row["rejected"]) == (" 6", " 7")
    assert (row["rm_best"], row["rm_worst"]) == pytest.approx((0.9, -0.4))
    # 6 candidate pairs, the RM orders 5 like the gold reward; its pick " 6" is the gold-best
    assert agreement == pytest.approx({"rm_sample_agreement": 5 / 6, "best_of_k_gold": 1.0,
                                       "mean_sample_gold": 0.525, "oracle_best_of_k_gold": 1.0})
    game.gold_reward = None
    assert game.policy_rows(None, rm, 0)[1] == {}


def test_best_of_k_agreement_by_hand():
    """Gold ties are no evidence (left out); a scorer tie on a gold-ordered pair counts 1/2; pooled over prompts."""
    from jaxpref.eval.metrics import best_of_k_agreement

    out = best_of_k_agreement([[1.0, 1.0, 0.0], [0.3, 0.1]], [[0.2, 0.9, 0.9], [0.0, 1.0]])
    # prompt 1: (0,1) scorer tie -> 1/2, (0,2) scorer says 0 > 2 but gold 2 > 0 -> 0, (1,2) gold tie -> skipped;
    # prompt 2: (0,1) wrong -> 0.  Pooled: 0.5 / 3.
    assert out["rm_sample_agreement"] == pytest.approx(0.5 / 3)
    assert out["best_of_k_gold"] == pytest.approx((0.2 + 0.0) / 2)  # first of the tied top scores; then index 0
    assert out["mean_sample_gold"] == pytest.approx(((0.2 + 0.9 + 0.9) / 3 + 0.5) / 2)
    assert out["oracle_best_of_k_gold"] == pytest.approx((0.9 + 1.0) / 2)
    assert np.isnan(best_of_k_agreement([[1.0, 2.0]], [[0.5, 0.5]])["rm_sample_agreement"])
    with pytest.raises(ValueError, match="must match"):
        best_of_k_agreement([[1.0]], [[0.5, 0.5]])


@pytest.mark.parametrize("reinit", [True, False])
def test_each_round_rm_starts_from_its_base_unless_told_to_continue(tiny_apo, tmp_path, reinit):
    """``apo.rm_reinit``: the round's RM session starts from the RM base (the paper's choice), not from the last
    round's RM; with ``rm_reinit=False`` it continues from the last round's params."""
    from jaxpref.algorithms import apo
    from jaxpref.pipeline import task_inputs
    from jaxpref.train.runtime import Runtime

    cfg, td = tiny_apo
    cfg = cfg.copy_and_resolve_references()
    cfg.apo.rm_reinit = reinit
    inputs = task_inputs(cfg, task_data=td)
    game = apo.Game(Runtime.build(cfg, model=inputs.model, tokenizer=inputs.tokenizer), str(tmp_path), inputs,
                    progress=False)
    previous = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1.0, game.rm_base)  # "last round's RM"
    rows = [dict(r) for r in game.human_rows[:4]]
    trainer = game.rm_trainer(1, rows, previous)
    expected = game.rm_base if reinit else previous
    for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(trainer.state.params)),
                         jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    trainer.close()


def test_static_adversarial_pairs_control_reuses_round_1s_pairs_and_reports_rm_agreement(tiny_apo, tmp_path):
    """``apo.refresh_adversarial = False``: every round's RM trains on round 1's (golden, SFT-sample) pairs; each
    round records how its RM ranks the policy's own samples against the gold reward."""
    cfg, td = tiny_apo
    cfg = cfg.copy_and_resolve_references()
    cfg.apo.refresh_adversarial = False
    result, _ = run_algorithm(cfg, str(tmp_path), task_data=td)
    first, second = (json.loads((tmp_path / f"round_{r}" / "adversarial.json").read_text()) for r in (0, 1))
    assert first and second == first
    for record in result["rounds"]:
        assert 0.0 <= record["rm_sample_agreement"] <= 1.0
        assert record["mean_sample_gold"] <= record["oracle_best_of_k_gold"]
        assert record["best_of_k_gold"] <= record["oracle_best_of_k_gold"]


def test_golden_answers_of_a_given_quality():
    """``task.golden_quality``: (1, 1) is the exact optimum; (0.7, 0.95) gives answers whose gold reward lies in
    that range on average, the same answer for the same prompt, never longer or shorter than the ideal."""
    from jaxpref.errors import ConfigError
    from jaxpref.tasks import gold

    task = S.GoldTask(prompt_length=6)
    prompts = task.sample_prompts(np.random.default_rng(0), 400)
    exact = gold.golden_answers(task, (1.0, 1.0), seed=0)
    assert all(task.gold_reward(p, [int(t) for t in exact(p).split()]) == 1.0 for p in prompts[:20])
    good = gold.golden_answers(task, (0.7, 0.95), seed=0)
    rewards = [task.gold_reward(p, [int(t) for t in good(p).split()]) for p in prompts]
    assert 0.7 <= np.mean(rewards) <= 0.95 and min(rewards) < 1.0 and all(len(good(p).split()) == 6 for p in prompts)
    assert good(prompts[3]) == good(prompts[3]) and good(prompts[3]) == gold.golden_answers(task, (0.7, 0.95), 0)(prompts[3])
    with pytest.raises(ConfigError, match="golden_quality"):
        gold.golden_answers(task, (0.9, 0.8), seed=0)
