r"""Reward-conditioned DPO: direct alignment on reward-augmented data (Zhang et al., ICML 2025; arXiv 2410.08067).

1. **Relabel** (:func:`jaxpref.data.relabel.reward_augment`): every scored pair ``(x, y_w, r_w, y_l, r_l)``
   becomes ``(x | r_w, y_w > y_l)`` and ``(x | r_l, y_l > y_w)`` -- the goal-conditioned reward
   ``-(g - r(x, y))^2`` prefers the response whose score matches the goal (paper Sec. 4).
2. **Train** any loss of :mod:`jaxpref.losses` on the ``2N`` pairs, unchanged (``config.loss`` applies).
3. **Infer** conditioned on the best score (``reward_conditioned.inference_goal``, default the scale's max).

Scores come from the data (``score_chosen``/``score_rejected``, e.g. UltraFeedback's GPT-4 ratings) or, with
``reward_conditioned.scores = "implicit"``, from a DPO policy's implicit reward
``beta * (log pi(y|x) - log pi_ref(y|x))`` (the paper reports this works even better): a DPO pass on the
original pairs (``<workdir>/implicit_dpo``, or ``implicit_policy_dir`` if given) scores every response, and
the ``2N`` rewards map onto the scale by rank (:func:`rank_to_scale`). The original labels are kept.

Evaluation reports held-out preference accuracy twice: on the pairs as they are (unconditioned, the
paper's protocol) and conditioned on the inference goal.

Config keys (``config.reward_conditioned``): ``template``, ``ties`` (keep | drop | error), ``half``,
``scale_min``/``scale_max``, ``inference_goal`` (None = scale_max), ``system_role`` (auto | true | false),
``scores`` (data | implicit), ``implicit_policy_dir``.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from jaxpref import data as D
from jaxpref.data import relabel
from jaxpref.train.logging import write_results
from jaxpref.train.trainer import ConfigError, Trainer, build_model, build_tokenizer, load_rows

log = logging.getLogger(__name__)


def options(cfg) -> dict:
    """``config.reward_conditioned`` with defaults filled in."""
    rc = cfg.get("reward_conditioned", {})
    lo, hi = float(rc.get("scale_min", 1)), float(rc.get("scale_max", 10))
    goal = rc.get("inference_goal", None)
    return {"template": rc.get("template", relabel.DEFAULT_GOAL_TEMPLATE), "ties": rc.get("ties", "keep"),
            "half": bool(rc.get("half", False)), "scale": (lo, hi), "inference_goal": hi if goal is None else float(goal),
            "system_role": rc.get("system_role", "auto"), "scores": rc.get("scores", "data"),
            "implicit_policy_dir": rc.get("implicit_policy_dir", None)}


def chat_has_system_role(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (some, e.g. Mistral's, reject it)."""
    try:
        text = tokenizer.render_chat([{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "u"}],
                                     add_generation_prompt=True)
    except Exception:  # noqa: BLE001 -- templates raise whatever their authors chose
        return False
    return "SYSTEM-PROBE" in text


def _system_role(opts: dict, tokenizer) -> bool:
    setting = opts["system_role"]
    if setting == "auto":
        return tokenizer is not None and hasattr(tokenizer, "render_chat") and chat_has_system_role(tokenizer)
    return bool(setting)


def rank_to_scale(values, scale: tuple[float, float]) -> np.ndarray:
    """Map values onto integer scores of ``scale`` by rank: the lowest gets ``min``, the highest ``max``, equal
    values equal scores (average rank), rounded to integers."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return np.full(v.shape, scale[1])
    order = v.argsort(kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size)
    for value in np.unique(v):  # ties share their mean rank
        same = v == value
        ranks[same] = ranks[same].mean()
    lo, hi = scale
    return np.floor(lo + (hi - lo) * ranks / (v.size - 1) + 0.5)


def implicit_scores(cfg, rows: D.PreferenceDataset, workdir: str, *, model_and_params, progress: bool = True):
    """Rows with ``score_chosen``/``score_rejected`` replaced by the rank-scaled implicit rewards of a DPO policy
    trained on ``rows`` (or loaded from ``implicit_policy_dir``). Rows that do not tokenize are dropped, with
    a count in the log."""
    opts = options(cfg)
    model, params0 = model_and_params
    trainer = Trainer(cfg, os.path.join(workdir, "implicit_dpo"), rows=rows, model_and_params=(model, params0),
                      progress=progress)
    try:
        if opts["implicit_policy_dir"]:
            from jaxpref import models as M

            _, policy = M.from_pretrained(opts["implicit_policy_dir"])
            policy = jax.device_put(policy, trainer.shardings.params)
        else:
            trainer.fit()
            policy = trainer.state.params
        (pol_c, pol_r), (ref_c, ref_r) = trainer.pair_logps(policy, trainer.pairs, with_reference=True)
        beta = cfg.loss.beta
        rewards = np.concatenate([beta * (pol_c - ref_c), beta * (pol_r - ref_r)])
        scores = rank_to_scale(rewards, opts["scale"])
        n = len(trainer.pairs)
        by_id = {p.id: (float(scores[i]), float(scores[n + i])) for i, p in enumerate(trainer.pairs)}
    finally:
        trainer.close()
    out = [dict(r, score_chosen=by_id[r["id"]][0], score_rejected=by_id[r["id"]][1]) for r in rows if r["id"] in by_id]
    if len(out) < len(rows):
        log.warning("implicit scores: %d of %d rows did not tokenize and were dropped", len(rows) - len(out), len(rows))
    return D.PreferenceDataset(out)


def augment(cfg, rows, *, tokenizer=None, render=None) -> D.PreferenceDataset:
    """:func:`reward_augment` with the config's options (``render`` overrides the goal text, e.g. goal tokens)."""
    opts = options(cfg)
    return relabel.reward_augment(rows, template=opts["template"], ties=opts["ties"], half=opts["half"],
                                  seed=cfg.get("seed", 0), scale=opts["scale"], render=render,
                                  system_role=_system_role(opts, tokenizer))


def conditioned(cfg, rows, goal: float, *, tokenizer=None, render=None) -> D.PreferenceDataset:
    """Held-out rows with prompts conditioned on ``goal`` (labels unchanged)."""
    opts = options(cfg)
    return relabel.condition_rows(rows, goal, template=opts["template"], scale=opts["scale"], render=render,
                                  system_role=_system_role(opts, tokenizer))


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """``python -m jaxpref.main`` entry on real data: (implicit scores,) relabel, train, evaluate both ways,
    export; ``results.json`` in ``workdir``."""
    rows, eval_rows = load_rows(cfg)
    opts = options(cfg)
    model_and_params = build_model(cfg)
    if opts["scores"] == "implicit":
        rows = implicit_scores(cfg, rows, workdir, model_and_params=model_and_params, progress=progress)
    elif opts["scores"] != "data":
        raise ConfigError(f"config.reward_conditioned.scores must be 'data' or 'implicit', got {opts['scores']!r}.")
    augmented = augment(cfg, rows, tokenizer=build_tokenizer(cfg, model_and_params[0].config))
    log.info("reward-augmented %d rows into %d pairs", len(rows), len(augmented))
    trainer = Trainer(cfg, workdir, rows=augmented, eval_rows=eval_rows, model_and_params=model_and_params,
                      progress=progress)
    try:
        summary = trainer.fit()
        result = {"algorithm": "reward_conditioned", **summary, "num_rows": len(rows), "num_pairs": len(augmented),
                  "inference_goal": opts["inference_goal"]}
        if eval_rows is not None:
            result["eval"] = trainer.evaluate()
            goal_rows = conditioned(cfg, eval_rows, opts["inference_goal"], tokenizer=trainer.tokenizer)
            result["eval_goal_max"] = trainer.evaluate(trainer.batcher_for(goal_rows))
        result.update(trainer.maybe_export(summary))
    finally:
        trainer.close()
    write_results(workdir, result)
    return result


# ---- the gold-reward task ----------------------------------------------------------------------------


def _goal_render(task):
    return lambda score: str(task.goal_token(score))


def on_task_scores(td, rows) -> D.PreferenceDataset:
    """Gold-reward-task rows with their gold rewards mapped onto the goal scale ``1 .. goal_tokens`` by rank over
    all ``2N`` training responses (:func:`rank_to_scale`), so every goal, the top one included, is populated --
    as a 1-10 rating scale is in real data. (A linear map of the gold reward leaves the top goal almost empty:
    perfect responses are rare among SFT samples, and conditioning on an unseen goal token collapses the policy.)"""
    gold = np.array([[float(r["score_chosen"]), float(r["score_rejected"])] for r in rows]).T.reshape(-1)
    scores = rank_to_scale(gold, (1, td.task.goal_tokens))
    n = len(rows)
    return D.PreferenceDataset([dict(r, score_chosen=float(scores[i]), score_rejected=float(scores[n + i]))
                                for i, r in enumerate(rows)])


def run_on_task(cfg, td, rows, workdir: str, *, progress: bool = False) -> dict:
    """Reward-conditioned DPO on the gold-reward task from the task's SFT policy; reports gold reward conditioned
    on the inference goal, the unconditioned gold reward, both clean accuracies, the goal sweep
    (``[[goal, mean gold reward], ...]`` for every goal of the scale) and high-score-rejected unlearning."""
    from jaxpref.eval.experiment import evaluate_policy, high_rejected_unlearning
    from jaxpref.eval.metrics import sampled_gold_reward

    task = td.task
    opts = options(cfg)
    if task.goal_tokens < 2 or opts["scale"] != (1.0, float(task.goal_tokens)):
        raise ConfigError(f"reward-conditioned DPO on the gold-reward task needs task.goal_tokens >= 2 and "
                          f"reward_conditioned.scale_min/max = 1/{task.goal_tokens}; got {task.goal_tokens} and "
                          f"{opts['scale']}.")
    render = _goal_render(task)
    if opts["scores"] == "implicit":
        scored = implicit_scores(cfg, rows, workdir, model_and_params=(td.model, td.sft_params), progress=progress)
    else:
        scored = on_task_scores(td, rows)
    augmented = augment(cfg, scored, render=render)
    trainer = Trainer(cfg, workdir, rows=augmented, eval_rows=td.eval_rows, model_and_params=(td.model, td.sft_params),
                      progress=progress)
    try:
        trainer.fit(resume=False)
        params = trainer.state.params
        goal = opts["inference_goal"]
        clean = trainer.evaluate()["rewards/accuracies"]
        goal_rows = conditioned(cfg, td.eval_rows, goal, render=render)
        clean_goal = trainer.evaluate(trainer.batcher_for(goal_rows))["rewards/accuracies"]
        prefix = [task.goal_token(goal)]
        result = {"algorithm": "reward_conditioned", "num_augmented_pairs": len(augmented), "inference_goal": goal,
                  **evaluate_policy(td, params, clean_accuracy=clean, seed=cfg.seed, prefix=prefix),
                  "clean_accuracy_goal_max": clean_goal}
        result["gold_reward_unconditioned"] = sampled_gold_reward(task, td.model, params, td.eval_prompts,
                                                                  seed=cfg.seed + 2)["gold_reward_sampled"]
        lo, hi = int(opts["scale"][0]), int(opts["scale"][1])
        # the inference goal's entry is the gold reward above (same prompts, seed and prefix): not sampled twice
        result["goal_sweep"] = [[g, result["gold_reward"] if g == goal else sampled_gold_reward(
            task, td.model, params, td.eval_prompts, seed=cfg.seed + 2, prefix=[task.goal_token(g)])["gold_reward_sampled"]]
            for g in range(lo, hi + 1)]
        result["unlearning_high_rejected"] = high_rejected_unlearning(td, params, rows)
        result["unlearning_high_rejected_goal_max"] = high_rejected_unlearning(td, params, rows, prefix=prefix)
    finally:
        trainer.close()
    return result
