"""The gold-reward task as an adapter: rows, prompts, the SFT policy and an evaluation callback.

``config.task.name = "gold"`` selects it. Per seed, :func:`build_task_data` SFTs a tiny policy and samples
and labels its pairs (:mod:`jaxpref.tasks.synthetic`); :func:`inputs` flips ``data.flip_rate`` of the labels
and hands the algorithm plain rows and prompts. What the algorithm trained is measured by ``evaluate``:
gold reward of samples (temperature 1 and greedy), win rate against the SFT policy and KL to it on
held-out prompts, plus how much good-but-rejected training responses were unlearned.

Task specifics stay here: reward-conditioned DPO's goals are extra vocabulary tokens (``task.goal_tokens``),
scored by the rank of each response's gold reward; APO's golden answer is the gold-optimal response (or a
good-but-not-optimal one, ``task.golden_quality``).
"""

from __future__ import annotations

import numpy as np

from jaxpref import data as D
from jaxpref.errors import ConfigError
from jaxpref.tasks import TaskInputs
from jaxpref.tasks import synthetic as S


def task_from_config(cfg) -> S.GoldTask:
    t = cfg.task
    return S.GoldTask(vocab_size=t.vocab_size, prompt_length=t.prompt_length, length_penalty=t.length_penalty,
                      goal_tokens=t.goal_tokens, sft_goals=t.sft_goals)


# task keys that choose how built task data is used, not what is built: variants differing only in these share it
USE_ONLY_KEYS = ("name", "eval_split", "num_policy_prompts", "golden_quality")


def task_data_key(cfg) -> str:
    """The part of ``cfg.task`` that :func:`build_task_data` depends on, as canonical JSON (every key but
    :data:`USE_ONLY_KEYS`, so a key added later counts unless it is listed there)."""
    import json

    return json.dumps({k: v for k, v in cfg.task.to_dict().items() if k not in USE_ONLY_KEYS}, sort_keys=True)


def build_task_data(cfg, seed: int, progress: bool = False) -> S.TaskData:
    """The SFT policy, its labelled pairs, held-out prompts and clean pairs for ``seed`` (shared by flip rates)."""
    t = cfg.task
    return S.build_preference_data(
        task_from_config(cfg), seed=seed, num_pair_prompts=t.num_pair_prompts, num_eval_prompts=t.num_eval_prompts,
        num_sft_prompts=t.num_sft_prompts, samples_per_prompt=t.samples_per_prompt, sft_steps=t.sft_steps,
        labeling=t.labeling, selection=t.selection, hidden=t.hidden, layers=t.layers, num_val_prompts=t.num_val_prompts,
        progress=progress)


def evaluate_policy(td: S.TaskData, params, *, clean_accuracy: float | None = None, seed: int = 0,
                    prefix=()) -> dict:
    """Gold reward (temperature 1 and greedy), win rate vs the SFT policy, KL to it, on held-out prompts
    (the policy's prompts preceded by ``prefix``, e.g. a goal token; the SFT policy's never are)."""
    ev = S.sampled_gold_reward(td.task, td.model, params, td.eval_prompts, seed=seed + 2, prefix=prefix)
    from jaxpref.eval.metrics import win_rate

    out = {
        "gold_reward": ev["gold_reward_sampled"],
        "gold_reward_greedy": ev["gold_reward_greedy"],
        "win_rate": win_rate(ev["rewards_sampled"], td.sft_eval["rewards_sampled"]),
        "kl": S.sampled_kl(td.task, td.model, params, td.sft_params, td.eval_prompts, seed=seed + 3, prefix=prefix),
        "sft_gold_reward": td.sft_eval["gold_reward_sampled"],
        "sft_gold_reward_greedy": td.sft_eval["gold_reward_greedy"],
    }
    if clean_accuracy is not None:
        out["clean_accuracy"] = clean_accuracy
    return out


def high_rejected_unlearning(td: S.TaskData, params, rows, *, quantile: float = 0.75, prefix=()) -> float:
    """Mean ``log pi(y_l|x) - log pi_sft(y_l|x)`` over the training ``rows`` whose rejected response has a gold
    reward (``gold_rejected``) at or above the ``quantile`` of rejected rewards: how much good-but-rejected
    responses were unlearned (more negative = more). ``prefix`` (a goal token) conditions the policy only."""
    from jaxpref.eval.metrics import response_logprobs

    gold = np.array([float(r["gold_rejected"]) for r in rows])
    high = [r for r, g in zip(rows, gold) if g >= np.quantile(gold, quantile)]
    prompts = [S.from_text(r["prompt"]) for r in high]
    responses = [S.from_text(r["rejected"]) + [S.EOS] for r in high]
    pol = response_logprobs(td.model, params, [[S.BOS] + list(prefix) + p for p in prompts], responses)
    ref = response_logprobs(td.model, td.sft_params, [[S.BOS] + p for p in prompts], responses)
    return float(np.mean(pol - ref))


def goal_scores(td: S.TaskData, rows) -> D.PreferenceDataset:
    """Rows with their gold rewards mapped onto the goal scale ``1 .. goal_tokens`` by rank over all ``2N``
    training responses, so every goal, the top one included, is populated -- as a 1-10 rating scale is in
    real data. (A linear map of the gold reward leaves the top goal almost empty: perfect responses are rare
    among SFT samples, and conditioning on an unseen goal token collapses the policy.)"""
    from jaxpref.data.relabel import rank_to_scale

    gold = np.array([[float(r["gold_chosen"]), float(r["gold_rejected"])] for r in rows]).T.reshape(-1)
    scores = rank_to_scale(gold, (1, td.task.goal_tokens))
    n = len(rows)
    return D.PreferenceDataset([dict(r, score_chosen=float(scores[i]), score_rejected=float(scores[n + i]))
                                for i, r in enumerate(rows)])


def golden_answers(task: S.GoldTask, quality, seed: int):
    """APO's golden answer of a prompt (token list -> response text): the ideal response when ``quality`` is
    ``(1, 1)``; otherwise :meth:`GoldTask.noisy_response` at a quality drawn from ``[min, max]``, without length
    noise, from a generator seeded by ``seed`` and the prompt (the same prompt always gets the same answer)."""
    lo, hi = (float(q) for q in quality)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"config.task.golden_quality={tuple(quality)} must be (min, max) with 0 <= min <= max <= 1.")
    if lo == 1.0:
        return lambda p: " " + S.to_text(task.target(p))

    def golden(p):
        rng = np.random.default_rng([seed, *(int(t) for t in p)])
        return " " + S.to_text(task.noisy_response(rng, p, rng.uniform(lo, hi), length_noise=0.0))

    return golden


def _evaluator(cfg, td: S.TaskData):
    task = td.task

    def evaluate(params, *, rows=None, clean_accuracy=None, goal=None) -> dict:
        prefix = [] if goal is None else [task.goal_token(goal)]
        out = evaluate_policy(td, params, clean_accuracy=clean_accuracy, seed=cfg.seed, prefix=prefix)
        if rows is not None:
            out["unlearning_high_rejected"] = high_rejected_unlearning(td, params, rows)
            if goal is not None:
                out["unlearning_high_rejected_goal_max"] = high_rejected_unlearning(td, params, rows, prefix=prefix)
        if goal is not None:
            out["gold_reward_unconditioned"] = S.sampled_gold_reward(
                task, td.model, params, td.eval_prompts, seed=cfg.seed + 2)["gold_reward_sampled"]
            # the inference goal's entry is the gold reward above (same prompts, seed and prefix): not sampled twice
            out["goal_sweep"] = [[g, out["gold_reward"] if g == goal else S.sampled_gold_reward(
                task, td.model, params, td.eval_prompts, seed=cfg.seed + 2, prefix=[task.goal_token(g)])[
                "gold_reward_sampled"]] for g in range(1, task.goal_tokens + 1)]
        return out

    return evaluate


def inputs(cfg, td: S.TaskData | None = None, *, progress: bool = False) -> TaskInputs:
    """The task's rows with ``data.flip_rate`` of the labels flipped (seed ``config.seed``), its SFT policy,
    prompts and evaluation. ``td`` reuses task data built for this seed (experiments share it)."""
    td = td or build_task_data(cfg, cfg.seed, progress=progress)
    if cfg.task.eval_split == "validation" and td.val_prompts is None:
        raise ConfigError("config.task.eval_split='validation' needs a validation split: set config.task.num_val_prompts > 0.")
    td = td.split(cfg.task.eval_split)  # every held-out metric below (and the APO golden pairs) uses this split
    task = td.task
    noisy, flipped = D.flip_labels(td.train_rows, cfg.data.flip_rate, seed=cfg.seed)
    # the gold rewards (swapped with their responses by a flip) travel as gold_*; score_* are what
    # reward-conditioned DPO conditions on
    rows = D.PreferenceDataset([dict(r, gold_chosen=r["score_chosen"], gold_rejected=r["score_rejected"])
                                for r in noisy])
    out = TaskInputs(rows=rows, eval_rows=td.eval_rows, params=td.sft_params, model=td.model,
                     tokenizer=D.load_tokenizer(task.tokenizer_path), evaluate=_evaluator(cfg, td),
                     extra={"num_pairs": len(rows), "num_flipped": int(flipped.sum()), "flip_rate": cfg.data.flip_rate,
                            "seed": cfg.seed})
    if cfg.algorithm == "reward_conditioned":
        rc = cfg.reward_conditioned
        if task.goal_tokens < 2 or (rc.scale_min, rc.scale_max) != (1.0, float(task.goal_tokens)):
            raise ConfigError(f"reward-conditioned DPO on the gold-reward task needs task.goal_tokens >= 2 and "
                              f"reward_conditioned.scale_min/max = 1/{task.goal_tokens}; got {task.goal_tokens} and "
                              f"{(rc.scale_min, rc.scale_max)}.")
    out.gold_reward = lambda prompt, response: task.gold_reward(  # noqa: E731
        S.from_text(prompt), [t for t in S.from_text(response) if t != S.EOS])
    if task.goal_tokens:
        out.goal_render = lambda score: str(task.goal_token(score))
        out.goal_scores = lambda rows_: goal_scores(td, rows_)
    if cfg.algorithm == "apo":
        golden = golden_answers(task, cfg.task.golden_quality, cfg.seed)
        out.rm_prompts = [{"id": r["id"], "prompt": r["prompt"], "golden": golden(S.from_text(r["prompt"]))}
                          for r in rows]
        rng = np.random.default_rng(cfg.seed + 11)
        out.policy_prompts = [{"id": f"pp:{i}", "prompt": S.to_text(p)}
                              for i, p in enumerate(task.sample_prompts(rng, cfg.task.num_policy_prompts))]
        out.golden_eval = [{"id": f"ev:{i}", "prompt": S.to_text(p), "golden": golden(p)}
                           for i, p in enumerate(td.eval_prompts)]
    return out
