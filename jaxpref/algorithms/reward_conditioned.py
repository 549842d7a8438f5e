r"""Reward-conditioned DPO: direct alignment on reward-augmented data (Zhang et al., ICML 2025; arXiv 2410.08067).

1. **Relabel** (:func:`jaxpref.data.relabel.reward_augment`): every scored pair ``(x, y_w, r_w, y_l, r_l)``
   becomes ``(x | r_w, y_w > y_l)`` and ``(x | r_l, y_l > y_w)`` -- the goal-conditioned reward
   ``-(g - r(x, y))^2`` prefers the response whose score matches the goal (paper Sec. 4).
2. **Train** any loss of :mod:`jaxpref.losses` on the ``2N`` pairs, unchanged (``config.loss`` applies).
3. **Infer** conditioned on the best score (``reward_conditioned.inference_goal``, default the scale's max).

Scores come from the data (``score_chosen``/``score_rejected``, e.g. UltraFeedback's GPT-4 ratings) or, with
``reward_conditioned.scores = "implicit"``, from a DPO policy's implicit reward
``beta * (log pi(y|x) - log pi_ref(y|x))`` (the paper reports this works even better): a DPO pass on the
original pairs (``<workdir>/implicit_dpo``, or ``implicit_policy_dir`` if given: a HF model or a PEFT adapter
directory) scores every response, and the ``2N`` rewards map onto the scale by rank (:func:`rank_to_scale`).
The original labels are kept. With LoRA both passes train adapters on one placed base, and the implicit
reward's reference is the base with the adapters off.

Evaluation reports held-out preference accuracy twice: on the pairs as they are (unconditioned, the
paper's protocol) and conditioned on the inference goal.

The algorithm is generic (:func:`train`): a task may supply its own goal rendering (the gold-reward task's
goal tokens) and per-response scores through its :class:`~jaxpref.tasks.TaskInputs`. Config keys
(``config.reward_conditioned``): ``template``, ``ties`` (keep | drop | error), ``half``,
``scale_min``/``scale_max``, ``inference_goal`` (None = scale_max), ``system_role`` (auto | true | false),
``scores`` (data | implicit), ``implicit_policy_dir``, ``pairs`` (both | goal_chosen | goal_rejected: the
method, or one of its two halves as a control).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from jaxpref import data as D
from jaxpref.data import relabel
from jaxpref.data.relabel import rank_to_scale
from jaxpref.tasks import TaskInputs
from jaxpref.train.runtime import Runtime
from jaxpref.train.trainer import Trainer, require_done

log = logging.getLogger(__name__)


def inference_goal(cfg) -> float:
    """``reward_conditioned.inference_goal``, or the top of the scale when it is None."""
    rc = cfg.reward_conditioned
    return rc.scale_max if rc.inference_goal is None else float(rc.inference_goal)


def chat_has_system_role(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (some, e.g. Mistral's, reject it)."""
    try:
        text = tokenizer.render_chat([{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "u"}],
                                     add_generation_prompt=True)
    except Exception:  # noqa: BLE001 -- templates raise whatever their authors chose
        return False
    return "SYSTEM-PROBE" in text


def _system_role(cfg, tokenizer) -> bool:
    setting = str(cfg.reward_conditioned.system_role).lower()
    if setting == "auto":
        return tokenizer is not None and hasattr(tokenizer, "render_chat") and chat_has_system_role(tokenizer)
    return setting == "true"


def implicit_scores(runtime: Runtime, rows, params, workdir: str, *, progress: bool = True) -> D.PreferenceDataset:
    """Rows with ``score_chosen``/``score_rejected`` replaced by the rank-scaled implicit rewards of a DPO policy
    trained on ``rows`` from ``params`` (or loaded from ``implicit_policy_dir``). Rows that do not tokenize are
    dropped, with a count in the log."""
    cfg = runtime.cfg
    rc = cfg.reward_conditioned
    trainer = Trainer(runtime, os.path.join(workdir, "implicit_dpo"), rows, params=params,
                      label="reward-conditioned · implicit-score DPO", progress=progress)
    try:
        if rc.implicit_policy_dir:
            policy = _load_implicit_policy(runtime, rc.implicit_policy_dir, params)
        else:
            require_done(trainer.fit(), "the implicit-score DPO pass")
            policy = trainer.state.params
        (pol_c, pol_r), (ref_c, ref_r) = trainer.pair_logps(policy, trainer.pairs, with_reference=True)
        beta = cfg.loss.beta
        rewards = np.concatenate([beta * (pol_c - ref_c), beta * (pol_r - ref_r)])
        scores = rank_to_scale(rewards, (rc.scale_min, rc.scale_max))
        n = len(trainer.pairs)
        by_id = {p.id: (float(scores[i]), float(scores[n + i])) for i, p in enumerate(trainer.pairs)}
    finally:
        trainer.close()
    out = [dict(r, score_chosen=by_id[r["id"]][0], score_rejected=by_id[r["id"]][1]) for r in rows if r["id"] in by_id]
    if len(out) < len(rows):
        log.warning("implicit scores: %d of %d rows did not tokenize and were dropped", len(rows) - len(out), len(rows))
    return D.PreferenceDataset(out)


def _load_implicit_policy(runtime: Runtime, policy_dir: str, params):
    """``reward_conditioned.implicit_policy_dir`` as train-state params of ``runtime``, placed: a HF model directory
    (full fine-tuning) or a PEFT adapter directory (``adapter_config.json``, e.g. a LoRA run's ``hf_adapter/``) on
    the base ``params`` -- with LoRA only the latter, with the run's own ``config.lora`` settings."""
    import jax

    from jaxpref import models as M
    from jaxpref.errors import ConfigError

    key = "config.reward_conditioned.implicit_policy_dir"
    is_adapter = os.path.exists(os.path.join(policy_dir, M.lora.ADAPTER_CONFIG))
    if not is_adapter:
        if runtime.lora.enabled:
            raise ConfigError(f"{key}={policy_dir!r} is not a PEFT adapter directory (no adapter_config.json); with "
                              "lora.rank > 0 point it to a LoRA run's hf_adapter/ directory.")
        _, policy = M.from_pretrained(policy_dir)
        return runtime.place(policy)
    adapters, settings = M.load_peft_adapter(policy_dir, runtime.model.config)
    if not runtime.lora.enabled:
        return runtime.place(M.merge_lora(jax.device_get(params), adapters, runtime.model.config, settings))
    mine = runtime.lora
    if (settings.rank, settings.alpha, set(settings.target_modules)) != (mine.rank, mine.alpha, set(mine.target_modules)):
        raise ConfigError(f"{key}={policy_dir!r} holds adapters of rank {settings.rank}, alpha {settings.alpha} on "
                          f"{list(settings.target_modules)}; this run's config.lora has rank {mine.rank}, alpha "
                          f"{mine.alpha} on {list(mine.target_modules)}. Set config.lora to match.")
    return jax.device_put({"lora": adapters}, runtime.param_shardings)


def augment(cfg, rows, *, tokenizer=None, render=None) -> D.PreferenceDataset:
    """:func:`reward_augment` with the config's options (``render`` overrides the goal text, e.g. goal tokens)."""
    rc = cfg.reward_conditioned
    return relabel.reward_augment(rows, template=rc.template, ties=rc.ties, half=rc.half, seed=cfg.seed,
                                  scale=(rc.scale_min, rc.scale_max), render=render,
                                  system_role=_system_role(cfg, tokenizer), pairs=rc.pairs)


def conditioned(cfg, rows, goal: float, *, tokenizer=None, render=None) -> D.PreferenceDataset:
    """Held-out rows with prompts conditioned on ``goal`` (labels unchanged)."""
    rc = cfg.reward_conditioned
    return relabel.condition_rows(rows, goal, template=rc.template, scale=(rc.scale_min, rc.scale_max), render=render,
                                  system_role=_system_role(cfg, tokenizer))


def train(runtime: Runtime, inputs: TaskInputs, workdir: str, *, progress: bool = True) -> dict:
    """(Implicit or task scores,) relabel, train any ``config.loss`` on the 2N pairs, evaluate unconditioned and
    conditioned on the inference goal, run the task's ``evaluate`` at that goal, export."""
    cfg = runtime.cfg
    rc = cfg.reward_conditioned
    rows = inputs.rows
    params = runtime.share_base(inputs.params)  # LoRA: one placed base for both training passes
    if rc.scores == "implicit":
        rows = implicit_scores(runtime, rows, params, workdir, progress=progress)
    elif inputs.goal_scores is not None:
        rows = inputs.goal_scores(rows)
    augmented = augment(cfg, rows, tokenizer=runtime.tokenizer, render=inputs.goal_render)
    log.info("reward-augmented %d rows into %d pairs", len(rows), len(augmented))
    goal = inference_goal(cfg)
    trainer = Trainer(runtime, workdir, augmented, params=params, eval_rows=inputs.eval_rows,
                      label="reward-conditioned DPO", progress=progress)
    try:
        summary = trainer.fit()
        require_done(summary, "reward-conditioned training")
        result = {"algorithm": "reward_conditioned", **summary.as_dict(), "num_rows": len(rows),
                  "num_pairs": len(augmented), "num_augmented_pairs": len(augmented), "inference_goal": goal,
                  **runtime.param_counts(),
                  "tokenization": trainer.data_report()}
        if inputs.eval_rows is not None:
            result["eval"] = trainer.evaluate()
            goal_rows = conditioned(cfg, inputs.eval_rows, goal, tokenizer=runtime.tokenizer, render=inputs.goal_render)
            result["eval_goal_max"] = trainer.evaluate(trainer.batcher_for(goal_rows))
            result["clean_accuracy_goal_max"] = result["eval_goal_max"]["rewards/accuracies"]
        if inputs.evaluate is not None:
            result.update(inputs.evaluate(trainer.merged_params(), rows=inputs.rows, goal=goal,
                                          clean_accuracy=result.get("eval", {}).get("rewards/accuracies")))
        result.update(trainer.maybe_export(summary))
    finally:
        trainer.close()
    return result
