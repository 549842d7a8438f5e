"""Reward-conditioned DPO: goal scale on the gold-reward task, implicit-score mapping, end-to-end smoke runs."""

import gzip
import json
import os

import numpy as np
import pytest

from jaxpref.configs_base import load_config_file
from jaxpref.tasks import synthetic as S

from helpers import run_algorithm
from jaxpref.data.relabel import rank_to_scale
from jaxpref.tasks.gold import goal_scores

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def test_goal_tokens_and_scale_hand_computed():
    task = S.GoldTask(vocab_size=32, goal_tokens=10)
    assert task.model_vocab_size == 42 and task.tokenizer_path == "int:42"
    assert [task.goal_token(g) for g in (1, 10)] == [32, 41]
    with pytest.raises(ValueError):
        task.goal_token(11)
    with pytest.raises(ValueError):
        task.goal_token(2.5)
    # content tokens (prompts and SFT responses) never use goal ids
    assert task.sample_prompts(np.random.default_rng(0), 500).max() < 32


def test_task_scores_by_rank():
    from types import SimpleNamespace

    td = SimpleNamespace(task=S.GoldTask(vocab_size=32, goal_tokens=10))
    rows = [{"id": "a", "gold_chosen": 1.0, "gold_rejected": 0.5}, {"id": "b", "gold_chosen": 0.5,
                                                                    "gold_rejected": -0.25}]
    out = goal_scores(td, rows)  # rewards 1.0, 0.5, 0.5, -0.25 -> ranks 3, 1.5, 1.5, 0 of 3
    assert [(r["score_chosen"], r["score_rejected"]) for r in out] == [(10.0, 6.0), (6.0, 1.0)]


def test_rank_to_scale():
    assert rank_to_scale([0.3, -1.0, 2.0], (1, 10)).tolist() == [6.0, 1.0, 10.0]  # ranks 1, 0, 2 of 2
    assert rank_to_scale([5.0, 5.0, 1.0, 9.0], (1, 10)).tolist() == [6.0, 6.0, 1.0, 10.0]  # ties: mean rank 1.5


def _smoke_cfg():
    cfg = load_config_file(os.path.join(CONFIGS, "rcdpo_synthetic.py"))
    cfg.task.num_sft_prompts, cfg.task.sft_steps = 256, 40
    cfg.task.num_pair_prompts, cfg.task.num_eval_prompts = 64, 32
    cfg.task.hidden = 32
    cfg.train.num_epochs = 1.0
    return cfg


def test_smoke_comparison_dpo_vs_augmented(tmp_path, monkeypatch):
    """DPO on N pairs, reward-conditioned DPO (sigmoid and IPO) and the half set through the comparison runner;
    the sampler's prompts carry the goal token."""
    from jaxpref.eval import compare

    seen = []
    real_generate = S.generate

    def spy(model, params, ids, mask, **kw):
        seen.append(np.asarray(ids))
        return real_generate(model, params, ids, mask, **kw)

    monkeypatch.setattr(S, "generate", spy)
    rc = _smoke_cfg()
    dpo = _smoke_cfg()
    dpo.algorithm = "dpo"
    ipo = _smoke_cfg()
    ipo.loss.type = "ipo"
    half = _smoke_cfg()
    half.reward_conditioned.half = True
    swapped = _smoke_cfg()
    swapped.reward_conditioned.pairs = "goal_rejected"
    variants = {"dpo": dpo, "rc": rc, "rc_ipo": ipo, "rc_half": half, "rc_swapped": swapped}
    out = compare.run_comparison(variants, [0.0], [0], str(tmp_path), metrics=("gold_reward", "clean_accuracy"))
    rc_run = out["runs"]["rc"][0]
    assert rc_run["num_augmented_pairs"] == 2 * out["runs"]["dpo"][0]["num_pairs"]
    assert out["runs"]["rc_half"][0]["num_augmented_pairs"] == out["runs"]["dpo"][0]["num_pairs"]
    assert out["runs"]["rc_swapped"][0]["num_augmented_pairs"] == out["runs"]["dpo"][0]["num_pairs"]
    # the held-out pair metrics reach the table as scalars: beta * mean log-ratio of the held-out chosen
    assert rc_run["eval/rewards/chosen"] == rc_run["eval"]["rewards/chosen"]
    for name in ("rc", "rc_ipo", "rc_half", "rc_swapped"):
        r = out["runs"][name][0]
        assert [g for g, _ in r["goal_sweep"]] == list(range(1, 11))
        for key in ("gold_reward", "win_rate", "clean_accuracy", "clean_accuracy_goal_max", "gold_reward_unconditioned",
                    "unlearning_high_rejected", "unlearning_high_rejected_goal_max", "kl"):
            assert np.isfinite(r[key]), (name, key)
    assert np.isfinite(out["runs"]["dpo"][0]["unlearning_high_rejected"])
    # sampling conditioned on goal g puts [BOS, goal_token(g)] before the prompt (left padded, all rows)
    task = S.GoldTask(vocab_size=32, goal_tokens=10)
    for goal in (1, 10):
        assert any((ids[:, -7] == task.goal_token(goal)).all() and (ids[:, -8] == S.BOS).all() for ids in seen)
    saved = json.loads((tmp_path / "rc" / "flip0.0_seed0" / "results.json").read_text())
    assert {"gold_reward", "win_rate", "clean_accuracy", "goal_sweep"} <= set(saved)
    assert "| rc_half | 0 |" in (tmp_path / "table.md").read_text()


def test_implicit_scores_on_the_task(tmp_path):
    from jaxpref.tasks import gold

    cfg = _smoke_cfg()
    cfg.reward_conditioned.scores = "implicit"
    td = gold.build_task_data(cfg, 0)
    r, _ = run_algorithm(cfg, str(tmp_path), task_data=td)
    assert r["num_augmented_pairs"] >= 2 * len(td.train_rows) - 2  # ties are kept; only untokenizable rows drop
    assert (tmp_path / "implicit_dpo" / "checkpoints").exists()


def test_real_data_path_with_scores(tmp_path):
    """``python -m jaxpref.main`` on scored HH text with the shipped Mistral tokenizer: relabels, trains,
    evaluates unconditioned and conditioned."""
    from jaxpref import data as D
    from jaxpref.pipeline import run

    rows = D.load_preferences(D.SHIPPED_HH, skip_invalid=True)[:24]
    rng = np.random.default_rng(0)
    path = tmp_path / "scored.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                                "score_chosen": int(rng.integers(5, 11)), "score_rejected": float(rng.integers(1, 6))})
                    + "\n")
    cfg = load_config_file(os.path.join(CONFIGS, "rcdpo_tiny.py"))
    cfg.reward_conditioned.scores = "data"
    cfg.data.train_path = str(path)
    cfg.data.eval_fraction = 0.25
    cfg.train.num_steps = 2
    cfg.export.hf = False
    result = run(cfg, str(tmp_path / "run"), progress=False)
    assert result["num_pairs"] == 2 * result["num_rows"]
    assert 0.0 <= result["eval"]["rewards/accuracies"] <= 1.0
    assert 0.0 <= result["eval_goal_max"]["rewards/accuracies"] <= 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b", "score_chosen": 12,
                               "score_rejected": 1}) + "\n")
    cfg.data.train_path = str(bad)
    cfg.data.eval_fraction = 0.0
    with pytest.raises(D.DataError, match="outside the score scale"):
        run(cfg, str(tmp_path / "bad"), progress=False)


def test_sft_goals_by_score_carry_each_responses_own_rank_scaled_reward():
    """``sft_goals="score"``: an SFT example's goal token is its response's gold reward ranked within a population
    (ties share a score, a value between two population values takes the nearer one's); ``"random"`` draws it."""
    task = S.GoldTask(vocab_size=32, goal_tokens=10, sft_goals="score")
    population = np.array([0.0, 0.0, 0.5, 1.0, 1.0, 1.0, -0.25, 0.25])
    goal = S.sft_goal_of(task, population)
    # ranks 0..7 -> 1 + 9 * rank / 7, rounded; ties take their mean rank
    assert [goal(r) for r in (-0.25, 0.0, 0.25, 0.5, 1.0)] == [1, 3, 5, 6, 9]
    assert goal(0.3) == goal(0.25) and goal(-3.0) == 1 and goal(2.0) == 9
    rng = np.random.default_rng(0)
    prompts = task.sample_prompts(rng, 200)
    ids, mask = S.sft_batches(task, prompts, rng, 0.0, 1.0, goal)
    with_goal = 0
    for row, m, p in zip(ids, mask, prompts):
        if row[1] >= task.vocab_size:  # [BOS, goal, prompt..., response..., EOS]
            with_goal += 1
            response = [int(t) for t, keep in zip(row, m) if keep and t != S.EOS]
            assert row[1] == task.goal_token(goal(task.gold_reward(p, response)))
    assert 60 < with_goal < 140


def test_the_trainer_sees_each_pair_under_both_goals_with_the_goal_matching_response_chosen(tmp_path, monkeypatch):
    """End to end on the gold-reward task: the tokenized pairs reaching the trainer are, per original pair, the goal
    token of the chosen response's score before the prompt with the original order, and the goal token of the
    rejected response's score with the responses swapped. Scores are recomputed here by brute-force rank (mean rank
    of ties) over the ``2N`` gold rewards; a relabelling that forgot the swap, mixed up the goals or ordered them
    against the gold reward fails."""
    from jaxpref.algorithms import reward_conditioned as RC
    from jaxpref.tasks import gold

    cfg = _smoke_cfg()
    td = gold.build_task_data(cfg, 0)
    cfg.train.num_steps = 1  # the data is what is under test: one step is enough to run the rest
    seen = []

    class Recording(RC.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self)

    monkeypatch.setattr(RC, "Trainer", Recording)
    run_algorithm(cfg, str(tmp_path), task_data=td)
    (trainer,) = seen
    task, rows = td.task, td.train_rows
    gold_rewards = np.array([r["score_chosen"] for r in rows] + [r["score_rejected"] for r in rows], np.float64)
    rank = np.array([(gold_rewards < g).sum() + ((gold_rewards == g).sum() - 1) / 2 for g in gold_rewards])
    score = np.floor(1 + 9 * rank / (len(gold_rewards) - 1) + 0.5)
    n = len(rows)
    ids = lambda text: [int(t) for t in text.split()]  # noqa: E731 -- the task's integer tokenizer
    expected = {}
    for i, r in enumerate(rows):
        expected[f"{r['id']}/w"] = (task.goal_token(score[i]), ids(r["chosen"]), ids(r["rejected"]))
        expected[f"{r['id']}/l"] = (task.goal_token(score[n + i]), ids(r["rejected"]), ids(r["chosen"]))
    got = {p.id: p for p in trainer.pairs}
    assert set(got) == set(expected)
    eos = trainer.runtime.tokenizer.eos_id
    for pid, (goal_id, chosen, rejected) in expected.items():
        p = got[pid]
        prompt = [int(t) for t in p.prompt_ids]
        assert goal_id in prompt[:2] and prompt.count(goal_id) == 1, (pid, prompt)
        assert [int(t) for t in p.chosen_ids if int(t) != eos] == chosen, pid
        assert [int(t) for t in p.rejected_ids if int(t) != eos] == rejected, pid
