"""ROPO: the exact w-step against brute force, one full loop on a tiny task, and mid-round resume."""

import itertools
import json
import os

import jax
import numpy as np
import pytest

from jaxpref.configs_base import load_config_file
from jaxpref import data as D
from jaxpref.algorithms import ropo
from jaxpref.train import trainer as trainer_mod

from helpers import preempt_during, run_algorithm


@pytest.mark.parametrize("seed", range(6))
def test_weight_update_equals_brute_force(seed):
    """min sum w_i l_i s.t. sum w = k, 0 <= w <= 1: the closed form matches every k-subset and the LP solver."""
    from scipy.optimize import linprog

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    losses = np.round(rng.normal(size=n), 1)  # rounding creates ties
    for k in range(n + 1):
        w = ropo.ropo_weight_update(losses, k)
        assert w.sum() == k and set(np.unique(w)) <= {0.0, 1.0}
        best_subset = min((sum(losses[list(s)]) for s in itertools.combinations(range(n), k)), default=0.0)
        lp = linprog(losses, A_eq=np.ones((1, n)), b_eq=[k], bounds=[(0, 1)] * n)
        assert float(w @ losses) == pytest.approx(best_subset, abs=1e-9)
        assert float(w @ losses) == pytest.approx(lp.fun, abs=1e-7)
    # the dropped pairs are exactly the highest-loss ones
    w = ropo.ropo_weight_update([0.1, 5.0, 0.3, 2.0], 2)
    assert w.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError):
        ropo.ropo_weight_update([1.0, 2.0], 3)


def _small_task_ropo_cfg():
    """``configs/ropo_synthetic.py`` on the small task of ``configs/dpo_synthetic.py`` (6-token prompts and
    responses, 512 pairs, no validation split): what these tests were sized for."""
    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "ropo_synthetic.py"))
    small = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py"))
    flip_rate = cfg.data.flip_rate
    cfg.task, cfg.data = small.task, small.data
    cfg.data.flip_rate = flip_rate
    cfg.train.pairs_per_batch = small.train.pairs_per_batch
    cfg.ropo.max_new_tokens = 10
    cfg.train.learning_rate, cfg.loss.beta = small.train.learning_rate, small.loss.beta
    return cfg


def _tiny_cfg():
    cfg = _small_task_ropo_cfg()
    cfg.task.num_sft_prompts, cfg.task.sft_steps = 256, 40
    cfg.task.num_pair_prompts, cfg.task.num_eval_prompts = 64, 32
    cfg.task.hidden = 32
    cfg.train.num_epochs = 1.0
    cfg.train.save_every = 1
    return cfg


@pytest.fixture(scope="module")
def tiny_task():
    from jaxpref.tasks import gold

    cfg = _tiny_cfg()
    cfg.seed, cfg.data.flip_rate = 0, 0.25
    td = gold.build_task_data(cfg, 0)
    rows = gold.inputs(cfg, td).rows  # the rows the algorithm sees: 25% flipped with seed 0
    return cfg, td, rows


def test_one_round_keeps_discards_and_resamples_as_the_weights_say(tiny_task, tmp_path):
    cfg, td, rows = tiny_task
    summary, _ = run_algorithm(cfg, str(tmp_path), task_data=td)
    record = json.loads((tmp_path / "round_0" / "round.json").read_text())
    n = record["num_pairs"]
    assert n == len(rows)
    weights = dict(zip(record["ids"], record["weights"]))
    assert sorted(record["kept_ids"]) == sorted(i for i, w in weights.items() if w == 1.0)
    assert sorted(record["discarded_ids"]) == sorted(i for i, w in weights.items() if w == 0.0)
    assert len(record["discarded_ids"]) == n - round(0.8 * n)
    losses = dict(zip(record["ids"], record["losses"]))
    assert max(losses[i] for i in record["kept_ids"]) <= min(losses[i] for i in record["discarded_ids"])
    # each recorded margin u = beta * Delta gives the recorded loss by the paper's formula, written out here
    u, alpha = np.asarray(record["margins"], np.float64), cfg.ropo.alpha
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    by_hand = 4 * alpha / (1 + alpha) ** 2 * (-np.log(sig(u)) + alpha * sig(-u))
    np.testing.assert_allclose(record["losses"], by_hand, rtol=1e-4, atol=1e-5)
    assert np.ptp(u) > 0 and record["flipped"] == [by_id_flip for by_id_flip in
                                                  (dict((r["id"], r["flipped"]) for r in rows)[i] for i in record["ids"])]
    assert summary["flag_auroc"] == record["flag_auroc"]
    # rejection-sampled pairs: new ids, the discarded prompt, two different responses, in the next round's data
    by_id = {r["id"]: r for r in rows}
    new = [r for r in record["next_rows"] if r["id"] in set(record["new_ids"])]
    assert new and len(new) == len(record["new_ids"])
    for r in new:
        src = r["resampled_from"]
        assert r["id"] == f"{src}/rs0" and src in record["discarded_ids"]
        assert r["prompt"] == by_id[src]["prompt"] and r["chosen"] != r["rejected"]
        assert all(t.isdigit() for t in (r["chosen"] + r["rejected"]).split())
    assert {r["id"] for r in record["next_rows"]} == set(record["kept_ids"]) | set(record["new_ids"])
    assert 0.0 <= summary["flag_precision"] <= 1.0
    assert summary["num_flipped"] == sum(r["flipped"] for r in rows) == round(0.25 * len(rows))


@pytest.fixture(scope="module")
def full_run(tiny_task, tmp_path_factory):
    cfg, td, _ = tiny_task
    return run_algorithm(cfg, str(tmp_path_factory.mktemp("ropo_full")), task_data=td)


def _same_run(resumed, p_res, full, p_full):
    assert [r["kept_ids"] for r in resumed["rounds"]] == [r["kept_ids"] for r in full["rounds"]]
    assert [r["discarded_ids"] for r in resumed["rounds"]] == [r["discarded_ids"] for r in full["rounds"]]
    assert [r["new_ids"] for r in resumed["rounds"]] == [r["new_ids"] for r in full["rounds"]]
    for a, b in zip(jax.tree_util.tree_leaves(p_res), jax.tree_util.tree_leaves(p_full)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_mid_round_reproduces_the_uninterrupted_run(tiny_task, full_run, tmp_path, monkeypatch):
    cfg, td, rows = tiny_task
    full, p_full = full_run
    original_fit = trainer_mod.Trainer.fit

    def killed_in_round_1(self, *a, **k):
        if self.workdir.endswith("round_1"):
            original_fit(self, num_steps=1)
            raise KeyboardInterrupt("simulated kill")
        return original_fit(self, *a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", killed_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_algorithm(cfg, str(tmp_path / "part"), task_data=td)
    monkeypatch.setattr(trainer_mod.Trainer, "fit", original_fit)
    assert (tmp_path / "part" / "round_1" / "checkpoints").exists()
    resumed, p_res = run_algorithm(cfg, str(tmp_path / "part"), task_data=td)
    _same_run(resumed, p_res, full, p_full)


def test_sigterm_in_round_0_writes_no_round_record_and_resumes_to_the_same_result(tiny_task, full_run, tmp_path,
                                                                                    monkeypatch):
    """SIGTERM during round 0's theta-step: the step finishes and is saved, no w-step runs on the half-trained
    policy, no round.json is written, Preempted unwinds; the re-run equals the uninterrupted run."""
    cfg, td, rows = tiny_task
    full, p_full = full_run
    preempt_during(monkeypatch, "round_0", 2, lambda: run_algorithm(cfg, str(tmp_path / "run"), task_data=td),
                   match="round 1")
    assert not (tmp_path / "run" / "round_0" / "round.json").exists()
    assert sorted(int(p.name) for p in (tmp_path / "run" / "round_0" / "checkpoints").iterdir() if p.name.isdigit())[-1] == 2
    resumed, p_res = run_algorithm(cfg, str(tmp_path / "run"), task_data=td)
    _same_run(resumed, p_res, full, p_full)


def test_discarded_pairs_are_enriched_in_flips(tmp_path):
    """On a smoke-size noisy task ROPO's discarded set holds more flipped pairs than the flip rate: with random
    discarding, precision would be 0.2 +- 0.04 (one sd for ~100 discarded pairs); the test asks for >= 0.3."""
    from jaxpref.tasks import gold

    cfg = _small_task_ropo_cfg()
    cfg.task.num_sft_prompts, cfg.task.sft_steps = 1024, 400
    cfg.task.num_pair_prompts, cfg.task.num_eval_prompts = 512, 32
    cfg.train.learning_rate, cfg.train.num_epochs = 5e-4, 4.0
    cfg.ropo.rounds, cfg.ropo.rejection_sampling = 2, False
    cfg.seed, cfg.data.flip_rate = 0, 0.2
    td = gold.build_task_data(cfg, 0)
    rows = gold.inputs(cfg, td).rows
    summary, _ = run_algorithm(cfg, str(tmp_path), task_data=td)
    record = summary["rounds"][0]
    assert record["num_flagged"] == len(rows) - round(0.8 * len(rows))
    assert record["flag_precision"] >= 0.3, record


def test_rejection_sampling_pairs_the_highest_and_lowest_implicit_reward(monkeypatch):
    """The refilled pair of a discarded prompt is (most rewarded, least rewarded) candidate by the policy's implicit
    reward beta * (log pi - log pi_0) -- swapping best and worst fails here."""
    from types import SimpleNamespace

    from jaxpref.algorithms import sampling as Sm

    tok = D.load_tokenizer("int:32")
    opts = D.TokenizeOptions(max_length=24, max_prompt_length=8)
    logp = {" 5": -1.0, " 6": -3.0, " 7": -0.5, " 8": -2.0}  # policy log-probs; the reference's are all -2
    text = lambda ids: " " + " ".join(str(int(t)) for t in ids if int(t) != tok.eos_id)  # noqa: E731

    def pair_logps(params, pairs, with_reference=False):
        pol = (np.array([logp[text(p.chosen_ids)] for p in pairs]), np.array([logp[text(p.rejected_ids)] for p in pairs]))
        ref = (np.full(len(pairs), -2.0), np.full(len(pairs), -2.0))
        return (pol, ref) if with_reference else pol

    runtime = SimpleNamespace(tokenizer=tok, tok_options=opts)
    trainer = SimpleNamespace(runtime=runtime, label="t", pair_logps=pair_logps)
    monkeypatch.setattr(Sm, "sample_responses", lambda *a, **k: [[" 5", " 6", " 7"]])
    rcfg = SimpleNamespace(num_candidates=3, max_new_tokens=4, temperature=1.0, top_p=1.0, include_originals=True)
    rows = [{"id": "r", "prompt": "3 4", "chosen": " 8", "rejected": " 6"}]
    (new,) = ropo.rejection_sample(trainer, None, rows, round_index=0, rcfg=rcfg, beta=0.1, seed=0)
    assert (new["chosen"], new["rejected"]) == (" 7", " 6") and new["id"] == "r/rs0"
