"""The gold-reward task, pair construction, flips and metrics on hand-made cases; the pipeline on a smoke config."""

import json

import jax
import numpy as np
import pytest

from jaxpref.configs_base import load_config_file
from jaxpref import data as D
from jaxpref import models as M
from jaxpref.eval import metrics as Me
from jaxpref.tasks import synthetic as S

TASK = S.GoldTask(vocab_size=32, prompt_length=3, mult=5, shift=7, length_penalty=0.5)


def test_cipher_target_and_gold_reward_hand_computed():
    # content ids 3..31 (n = 29); f(t) = 3 + ((t - 3) * 5 + 7) mod 29
    assert [TASK.cipher(t) for t in (3, 4, 5, 31)] == [10, 15, 20, 3 + (28 * 5 + 7) % 29]
    prompt = [3, 4, 5]
    assert TASK.target(prompt) == [20, 15, 10]  # reversed, then enciphered
    assert TASK.gold_reward(prompt, [20, 15, 10]) == 1.0
    assert TASK.gold_reward(prompt, [20, 15]) == pytest.approx(2 / 3 - 0.5 / 3)
    assert TASK.gold_reward(prompt, [20, 15, 10, 7]) == pytest.approx(1 - 0.5 / 3)
    assert TASK.gold_reward(prompt, [10, 15, 20]) == pytest.approx(1 / 3)  # only the middle matches
    assert TASK.gold_reward(prompt, []) == -0.5
    # the reward depends on the prompt: the same response scores differently
    assert TASK.gold_reward([5, 4, 3], [20, 15, 10]) == pytest.approx(1 / 3)


def test_noisy_responses_span_quality():
    rng = np.random.default_rng(0)
    perfect = [TASK.gold_reward([3, 4, 5], TASK.noisy_response(rng, [3, 4, 5], 1.0, length_noise=0.0))
               for _ in range(20)]
    assert perfect == [1.0] * 20
    bad = TASK.noisy_response(np.random.default_rng(1), [3, 4, 5], 0.0, length_noise=0.0)
    assert TASK.gold_reward([3, 4, 5], bad) < 1.0


def test_make_pairs_deterministic_best_worst_and_ties():
    prompts = np.array([[3, 4, 5], [6, 7, 8]])
    t0 = TASK.target([3, 4, 5])
    samples = [[t0, t0[:2], [9, 9, 9]],  # rewards 1.0, 0.5, 0.0
               [[9, 9, 9], [9, 9, 9]]]  # all tie -> no pair
    rows = S.make_pairs(TASK, prompts, samples, selection="best_worst")
    assert len(rows) == 1
    r = rows[0]
    assert r["id"] == "syn:0" and r["prompt"] == "3 4 5"
    assert r["chosen"] == " 20 15 10" and r["rejected"] == " 9 9 9"
    assert (r["score_chosen"], r["score_rejected"]) == (1.0, 0.0)
    for row in S.make_pairs(TASK, prompts, samples, selection="random", seed=3):
        assert row["score_chosen"] > row["score_rejected"]


def test_bradley_terry_labeling_rate():
    prompts = np.array([[3, 4, 5]] * 2000)
    t0 = TASK.target([3, 4, 5])
    samples = [[t0, [t0[0], 9, 9]]] * 2000  # rewards 1.0 vs 1/3: gap 2/3
    rows = S.make_pairs(TASK, prompts, samples, labeling="bradley_terry", bt_temperature=0.5, seed=0)
    wrong = np.mean([r["score_chosen"] < r["score_rejected"] for r in rows])
    expected = 1 - 1 / (1 + np.exp(-(2 / 3) / 0.5))
    assert abs(wrong - expected) < 0.03
    sharp = S.make_pairs(TASK, prompts[:200], samples[:200], labeling="bradley_terry", bt_temperature=1e-4)
    assert all(r["score_chosen"] > r["score_rejected"] for r in sharp)


def test_flips_carry_scores_and_mask():
    prompts = np.array([[3, 4, 5]] * 10)
    t0 = TASK.target([3, 4, 5])
    rows = S.make_pairs(TASK, prompts, [[t0, [9, 9, 9]]] * 10)
    noisy, flipped = D.flip_labels(rows, 0.4, seed=1)
    assert flipped.sum() == 4
    for r, f in zip(noisy, flipped):
        assert (r["score_chosen"] < r["score_rejected"]) == f == r["flipped"]


def test_metric_functions_hand_computed():
    assert Me.win_rate([1, 0.5, 0.2, 0.0], [0.5, 0.5, 0.3, -1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    pr = Me.flag_precision_recall(["a", "b", "c", "d"], ["b", "d", "e"])
    assert pr["flag_precision"] == 0.5 and pr["flag_recall"] == pytest.approx(2 / 3)
    nothing_flagged, nothing_flipped = Me.flag_precision_recall([], ["b"]), Me.flag_precision_recall(["a"], [])
    assert np.isnan(nothing_flagged["flag_precision"]) and nothing_flagged["flag_recall"] == 0.0
    assert nothing_flipped["flag_precision"] == 0.0 and np.isnan(nothing_flipped["flag_recall"])
    assert Me.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, np.std([1, 2, 3], ddof=1)))  # sample std
    with pytest.raises(ValueError):
        Me.win_rate([1.0], [1.0, 2.0])


def test_sequence_logps_and_kl_on_fixed_samples():
    cfg = S.model_config(TASK, hidden=32, layers=1)
    model, params = M.LlamaForCausalLM(cfg), M.init_params(cfg, 0)
    # hand check: log p(response + EOS) is the sum of next-token log-probs
    import jax
    import jax.numpy as jnp

    prompt, resp = [1, 3, 4, 5], [20, 15]
    got = Me.response_logprobs(model, params, [prompt], [resp + [S.EOS]])[0]
    seq = jnp.asarray([prompt + resp + [S.EOS]])
    logp = jax.nn.log_softmax(model.apply({"params": params}, seq)[0])
    manual = sum(float(logp[i, int(seq[0, i + 1])]) for i in range(3, 6))
    assert got == pytest.approx(manual, rel=1e-5)
    assert S.sampled_kl(TASK, model, params, params, np.array([[3, 4, 5], [6, 7, 8]])) == pytest.approx(0.0, abs=1e-6)
    # a sharper reference (LM head x3): KL(pi || ref) estimated from samples is clearly positive
    other = jax.tree_util.tree_map(lambda x: x, params)
    other["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 30.0
    kl = S.sampled_kl(TASK, model, params, other, np.array([[3, 4, 5]] * 64), num_samples=4)
    assert kl > 0.5


def test_pipeline_smoke(tmp_path):
    """The whole harness end to end on a tiny config (checks the plumbing, not the result)."""
    import os

    from jaxpref.eval import experiment

    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py"))
    cfg.task.num_sft_prompts, cfg.task.sft_steps = 256, 40
    cfg.task.num_pair_prompts, cfg.task.num_eval_prompts = 64, 32
    cfg.task.hidden = 32
    cfg.train.num_epochs = 1.0
    result = experiment.run_experiment(cfg, [0.0, 0.5], [0], str(tmp_path), progress=False)
    assert len(result["runs"]) == 2
    for r in result["runs"]:
        for key in ("gold_reward", "gold_reward_greedy", "win_rate", "clean_accuracy", "kl", "sft_gold_reward"):
            assert np.isfinite(r[key]), key
    assert result["runs"][1]["num_flipped"] == round(0.5 * result["runs"][1]["num_pairs"])
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["summary"]) == {"0.0", "0.5"} and "mean" in saved["summary"]["0.0"]["gold_reward"]


def test_validation_split_is_apart_from_the_test_split_and_changes_nothing_else(tmp_path):
    """``task.num_val_prompts`` adds validation prompts and clean pairs drawn apart from the test split (no prompt
    in both), leaves every other draw as it was (same SFT policy, train pairs and test split), and
    ``task.eval_split = "validation"`` makes the evaluation use them (the SFT policy scored on them too)."""
    import os

    from jaxpref.errors import ConfigError
    from jaxpref.tasks import gold

    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py"))
    cfg.task.num_sft_prompts, cfg.task.sft_steps = 64, 2
    cfg.task.num_pair_prompts, cfg.task.num_eval_prompts = 32, 32
    plain = gold.build_task_data(cfg, 3)
    cfg.task.num_val_prompts = 48
    with_val = gold.build_task_data(cfg, 3)
    assert plain.val_prompts is None and with_val.val_prompts.shape == (48, cfg.task.prompt_length)
    np.testing.assert_array_equal(plain.eval_prompts, with_val.eval_prompts)
    assert list(plain.train_rows) == list(with_val.train_rows) and list(plain.eval_rows) == list(with_val.eval_rows)
    for a, b in zip(jax.tree_util.tree_leaves(plain.sft_params), jax.tree_util.tree_leaves(with_val.sft_params)):
        np.testing.assert_array_equal(a, b)
    test_prompts = {tuple(p) for p in with_val.eval_prompts}
    assert not test_prompts & {tuple(p) for p in with_val.val_prompts}
    assert with_val.val_rows and all(r["id"].startswith("val:") for r in with_val.val_rows)

    cfg.task.eval_split = "validation"
    inputs = gold.inputs(cfg, with_val)
    assert list(inputs.eval_rows) == list(with_val.val_rows)
    cfg.task.eval_split, cfg.task.num_val_prompts = "validation", 0
    with pytest.raises(ConfigError, match="num_val_prompts"):
        gold.inputs(cfg, plain)
