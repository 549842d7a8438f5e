r"""ROPO: robust preference optimization for noisy labels (Liang et al., ICML 2025; arXiv 2404.04102 v2+).

**Objective** (the paper's constrained problem). One weight per pair, their sum fixed to the number of
pairs to keep::

    min_{theta, w}  sum_i w_i * l_ropo(theta; x_i, y_w,i, y_l,i)
    s.t.            sum_i w_i = (1 - rho) * N,   0 <= w_i <= 1

solved by alternating a **theta-step** (train the policy on the weighted pairs with the robust loss
:func:`jaxpref.losses.ropo_loss`; weights enter through the trainer's weighted reduction, and a pair of
weight 0 is simply left out) and a **w-step** (theta fixed).

**The w-step is a linear program with a closed-form solution** (:func:`ropo_weight_update`): with the
losses ``l_i`` fixed, minimise ``sum_i w_i l_i`` over the box ``[0, 1]^N`` cut by ``sum_i w_i = k``. If
some ``w_i > 0`` sits on a larger loss while some ``w_j < 1`` sits on a smaller one, moving
``eps = min(w_i, 1 - w_j)`` of weight from ``i`` to ``j`` keeps the constraint and changes the objective
by ``eps (l_j - l_i) <= 0``; repeating, an optimum puts weight 1 on the ``k`` smallest losses and 0 on the
rest. So the w-step **drops the rho*N highest-loss pairs** (ties broken by position; integral ``k``).

**Robust loss**: ``l_ropo(u) = 4a/(1+a)^2 [-log sigma(u) + a sigma(-u)]`` (default ``a = 14``): its
gradient weight is bounded for confidently contradicted pairs, so flipped labels keep a high loss --
which is what makes the w-step's ranking find them (see the loss's docstring).

**Robustness-guided rejection sampling** (purpose from the paper; mechanism a reconstruction, all
choices config keys): for every discarded prompt, sample ``num_candidates`` responses from the current
policy (optionally adding the two original responses), score each by the policy's implicit reward
``beta * (log pi(y|x) - log pi_0(y|x))``, and make the most and least rewarded candidates the prompt's new
pair (new id ``"<id>/rs<round>"``), so the prompt's information is not lost. New pairs face later w-steps.

**Loop** (details open in the paper; defaults documented in ``configs/ropo_*.py``): ``rounds`` theta-steps
with a w-step (and rejection sampling) between consecutive ones; the reference is always the starting
policy ``pi_0``; the policy continues from the previous round unless ``restart_from_initial``; the
filter ratio ``rho`` applies to the current pair set at each w-step. Every round writes
``round_<r>/round.json`` (kept and discarded ids, weights, losses, new pairs, flag precision/recall
when the flips are known) and the theta-step checkpoints in ``round_<r>/checkpoints``, so a run resumes
mid-round (the theta-step continues from its checkpoint) or after a finished round.

Config keys (``config.ropo``): ``rounds``, ``filter_ratio``, ``alpha``, ``train_loss`` / ``filter_loss``
(``"ropo"`` or ``"dpo"``: the ablation that filters by plain DPO), ``rejection_sampling``,
``num_candidates``, ``include_originals``, ``temperature``, ``top_p``, ``max_new_tokens``,
``restart_from_initial``.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from jaxpref import data as D
from jaxpref.algorithms import sampling as Sm
from jaxpref.losses import dpo_loss, ropo_loss
from jaxpref.train.logging import write_results
from jaxpref.train.trainer import Trainer, build_model, host_tree, load_rows

log = logging.getLogger(__name__)


def ropo_weight_update(losses: np.ndarray, num_keep: int) -> np.ndarray:
    """Exact w-step: ``argmin_w sum_i w_i l_i`` s.t. ``sum w = num_keep``, ``0 <= w <= 1`` -> 1 on the
    ``num_keep`` smallest losses (ties by index), 0 elsewhere. See the module docstring for the proof."""
    losses = np.asarray(losses, np.float64)
    if not 0 <= num_keep <= len(losses):
        raise ValueError(f"num_keep={num_keep} must be in [0, {len(losses)}].")
    order = np.lexsort((np.arange(len(losses)), losses))
    weights = np.zeros(len(losses), np.float32)
    weights[order[:num_keep]] = 1.0
    return weights


def ropo_pair_loss(ropo_cfg, beta: float):
    """A trainer pair loss: ROPO's robust loss (or plain DPO for the ``train_loss="dpo"`` ablation)."""
    alpha = ropo_cfg.get("alpha", 14.0)
    use_dpo = ropo_cfg.get("train_loss", "ropo") == "dpo"

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        if use_dpo:
            return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
        return ropo_loss(chosen, rejected, ref_chosen, ref_rejected, alpha=alpha, beta=beta)

    return pair_loss


# ---- scoring pairs with the current policy and the reference ----------------------------------------------


def per_pair_losses(policy: tuple, reference: tuple, *, kind: str, alpha: float, beta: float) -> np.ndarray:
    """``l_i`` of every pair from its policy and reference log-probs (``kind``: ``"ropo"`` or ``"dpo"``)."""
    (pc, pr), (rc, rr) = policy, reference
    if kind == "ropo":
        losses = ropo_loss(pc, pr, rc, rr, alpha=alpha, beta=beta)[0]
    elif kind == "dpo":
        losses = dpo_loss(pc, pr, rc, rr, beta=beta)[0]
    else:
        raise ValueError(f"config.ropo.filter_loss must be 'ropo' or 'dpo', got {kind!r}.")
    return np.asarray(losses)


# ---- rejection sampling --------------------------------------------------------------------------------


def rejection_sample(trainer: Trainer, policy_params, rows: list[dict], *, round_index: int,
                     rcfg, beta: float, seed: int) -> list[dict]:
    """New pairs for discarded ``rows``: most vs least implicit-reward candidate among ``num_candidates``
    policy samples (+ the originals). Prompts whose candidates all coincide get no new pair."""
    k = int(rcfg.get("num_candidates", 4))
    max_new = int(rcfg.get("max_new_tokens", trainer.cfg.data.max_length // 2))
    text_rows = [r for r in rows if isinstance(r["prompt"], str)]
    if len(text_rows) < len(rows):
        log.warning("rejection sampling skips %d conversational prompts", len(rows) - len(text_rows))
    if not text_rows:
        return []
    prompts = [r["prompt"] for r in text_rows]
    samples = Sm.sample_responses(trainer, policy_params, prompts, k, max_new_tokens=max_new,
                                  seed=seed * 7919 + round_index, temperature=rcfg.get("temperature", 1.0),
                                  top_p=rcfg.get("top_p", 1.0))
    candidates = []
    for row, cands in zip(text_rows, samples):
        if rcfg.get("include_originals", True):
            cands = cands + [row["chosen"], row["rejected"]]
        candidates.append(list(dict.fromkeys(c for c in cands if c.strip())))

    def implicit_reward(pairs):
        pol, ref = trainer.pair_logps(policy_params, pairs, with_reference=True)  # reference: the trainer's pi_0
        return beta * (pol[0] - ref[0]), beta * (pol[1] - ref[1])

    new_rows = []
    for row, cands, scored in zip(text_rows, candidates, Sm.score_candidates(trainer, prompts, candidates,
                                                                            implicit_reward)):
        bw = Sm.best_and_worst(scored)
        if bw is None or cands[bw[0]] == cands[bw[1]]:
            continue
        new_rows.append({"id": f"{row['id']}/rs{round_index}", "prompt": row["prompt"], "chosen": cands[bw[0]],
                         "rejected": cands[bw[1]], "resampled_from": row["id"]})
    return new_rows


# ---- the loop ---------------------------------------------------------------------------------------------


def _pair_metrics(policy: tuple, reference: tuple, beta: float, losses: np.ndarray) -> dict:
    """The trainer's evaluation metrics, from log-probs the w-step already computed (no second pass)."""
    chosen = beta * (np.asarray(policy[0]) - np.asarray(reference[0]))
    rejected = beta * (np.asarray(policy[1]) - np.asarray(reference[1]))
    return {"loss": float(np.mean(losses)), "rewards/chosen": float(chosen.mean()),
            "rewards/rejected": float(rejected.mean()), "rewards/accuracies": float(np.mean(chosen > rejected)),
            "rewards/margins": float(np.mean(chosen - rejected)), "logps/chosen": float(np.mean(policy[0])),
            "logps/rejected": float(np.mean(policy[1]))}


def _flag_metrics(rows: list[dict], discarded_ids: set[str]) -> dict:
    known = [r for r in rows if "flipped" in r]
    if not known:
        return {}
    from jaxpref.eval.metrics import flag_precision_recall

    flipped = {r["id"] for r in known if r["flipped"]}
    return flag_precision_recall(discarded_ids & {r["id"] for r in known}, flipped)


def run_rounds(cfg, workdir: str, rows: D.PreferenceDataset, *, model_and_params, eval_rows=None,
               progress: bool = True) -> dict:
    """The ROPO loop over ``rows`` from ``model_and_params`` (pi_0, also the reference). Returns a summary with
    per-round records, the final trainer's params (host) and the final eval metrics."""
    rcfg = cfg.ropo
    beta = cfg.loss.beta
    alpha = rcfg.get("alpha", 14.0)
    rounds = int(rcfg.get("rounds", 2))
    model, params0 = model_and_params
    current = [dict(r) for r in rows]
    original_rows = [dict(r) for r in rows]
    start_params = params0
    records = []
    trainer = None

    def theta_trainer(round_dir, train_rows):
        return Trainer(cfg, round_dir, rows=D.PreferenceDataset(train_rows), eval_rows=eval_rows,
                       model_and_params=(model, start_params), reference_params=params0,
                       pair_loss=ropo_pair_loss(rcfg, beta), progress=progress)

    for r in range(rounds):
        round_dir = os.path.join(workdir, f"round_{r}")
        record_path = os.path.join(round_dir, "round.json")
        if os.path.exists(record_path) and r < rounds - 1:
            with open(record_path) as f:
                record = json.load(f)
            records.append(record)
            current = record["next_rows"]
            trainer = theta_trainer(round_dir, record["train_rows"])
            trainer.maybe_restore()
            start_params = params0 if rcfg.get("restart_from_initial", False) else host_tree(trainer.state.params)
            trainer.close()
            continue
        trainer = theta_trainer(round_dir, current)
        trainer.fit()
        if r == rounds - 1:
            break
        # w-step over the pairs that survived tokenization (the trainer's pairs)
        pairs = trainer.pairs
        pol, ref = trainer.pair_logps(trainer.state.params, pairs, with_reference=True)  # reference: pi_0
        losses = per_pair_losses(pol, ref, kind=rcfg.get("filter_loss", "ropo"), alpha=alpha, beta=beta)
        num_keep = int(round((1.0 - rcfg.filter_ratio) * len(pairs)))
        weights = ropo_weight_update(losses, num_keep)
        by_id = {row["id"]: row for row in current}
        kept = [by_id[p.id] for p, w in zip(pairs, weights) if w > 0]
        discarded = [by_id[p.id] for p, w in zip(pairs, weights) if w == 0]
        new_rows = []
        if rcfg.get("rejection_sampling", True) and discarded:
            new_rows = rejection_sample(trainer, trainer.state.params, discarded, round_index=r, rcfg=rcfg,
                                        beta=beta, seed=cfg.get("seed", 0))
        record = {
            "round": r,
            "num_pairs": len(pairs),
            "ids": [p.id for p in pairs],
            "losses": [float(x) for x in losses],
            "weights": [float(x) for x in weights],
            "kept_ids": [row["id"] for row in kept],
            "discarded_ids": [row["id"] for row in discarded],
            "new_ids": [row["id"] for row in new_rows],
            **_flag_metrics(current, {row["id"] for row in discarded}),
            "train_rows": current,
            "next_rows": kept + new_rows,
            "train_metrics": _pair_metrics(pol, ref, beta, per_pair_losses(
                pol, ref, kind=rcfg.get("train_loss", "ropo"), alpha=alpha, beta=beta)),
        }
        if jax.process_index() == 0:
            with open(record_path + ".tmp", "w") as f:
                json.dump(record, f, default=float)
            os.replace(record_path + ".tmp", record_path)
        records.append(record)
        current = kept + new_rows
        start_params = params0 if rcfg.get("restart_from_initial", False) else host_tree(trainer.state.params)
        trainer.close()
    all_discarded = {i for rec in records for i in rec["discarded_ids"]}
    summary = {
        "rounds": [{k: v for k, v in rec.items() if k not in ("train_rows", "next_rows", "losses", "weights", "ids")}
                   for rec in records],
        **_flag_metrics(original_rows, all_discarded),
        "eval": trainer.evaluate() if trainer.eval_batcher is not None else {},
        "final_num_pairs": len(current),
    }
    return summary, trainer


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """``python -m jaxpref.main`` entry on real data: the ROPO loop, final evaluation, HF export, results.json."""
    rows, eval_rows = load_rows(cfg)
    summary, trainer = run_rounds(cfg, workdir, rows, model_and_params=build_model(cfg), eval_rows=eval_rows,
                                  progress=progress)
    result = {"algorithm": "ropo", "status": "done", **summary}
    if cfg.get("export", {}).get("hf", True):
        result["hf_export"] = trainer.export_hf(os.path.join(workdir, "hf_export"))
    trainer.close()
    write_results(workdir, result)
    return result


def run_on_task(cfg, td, rows, workdir: str, *, progress: bool = False) -> dict:
    """ROPO on the gold-reward task from the task's SFT policy; evaluation as for DPO plus flag metrics."""
    from jaxpref.eval.experiment import evaluate_policy

    summary, trainer = run_rounds(cfg, workdir, rows, model_and_params=(td.model, td.sft_params),
                                  eval_rows=td.eval_rows, progress=progress)
    try:
        clean = summary["eval"].get("rewards/accuracies")
        result = {"algorithm": "ropo", **evaluate_policy(td, trainer.state.params, clean_accuracy=clean, seed=cfg.seed),
                  **{k: v for k, v in summary.items() if k != "eval"}}
    finally:
        trainer.close()
    return result
