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
policy ``pi_0`` (with LoRA: the base with the adapters off -- the adapters start at ``B = 0``, so that *is*
``pi_0``; the w-step and the sampling use the adapted policy); the policy continues from the previous round
(LoRA: its adapters) unless ``restart_from_initial``; the
filter ratio ``rho`` applies to the current pair set at each w-step. Every round writes
``round_<r>/round.json`` (kept and discarded ids, weights, losses, new pairs, flag precision/recall
when the flips are known) and the theta-step checkpoints in ``round_<r>/checkpoints``, so a run resumes
mid-round (the theta-step continues from its checkpoint) or after a finished round.

The algorithm is generic: :func:`train` takes the runtime and a task's inputs (rows, starting params,
evaluation callback) and never knows which task it runs on. Config keys (``config.ropo``): ``rounds``, ``filter_ratio``, ``alpha``, ``train_loss`` / ``filter_loss``
(``"ropo"`` or ``"dpo"``: the ablation that filters by plain DPO), ``rejection_sampling``,
``num_candidates``, ``include_originals``, ``temperature``, ``top_p``, ``max_new_tokens``,
``restart_from_initial``.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from jaxpref import paths
from jaxpref.algorithms import sampling as Sm
from jaxpref.eval.metrics import flag_auroc, flag_precision_recall
from jaxpref.losses import dpo_loss, ropo_loss
from jaxpref.tasks import TaskInputs
from jaxpref.train import preemption
from jaxpref.train.runtime import Runtime, host_tree
from jaxpref.train.trainer import Trainer, require_done

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
    alpha = ropo_cfg.alpha
    use_dpo = ropo_cfg.train_loss == "dpo"

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        if use_dpo:
            return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
        return ropo_loss(chosen, rejected, ref_chosen, ref_rejected, alpha=alpha, beta=beta)

    return pair_loss


# ---- scoring pairs with the current policy and the reference ----------------------------------------------


def implicit_margins(policy: tuple, reference: tuple, beta: float) -> np.ndarray:
    """``u_i = beta * ((log pi(y_w) - log pi_0(y_w)) - (log pi(y_l) - log pi_0(y_l)))`` of every pair ``[N]``."""
    (pc, pr), (rc, rr) = policy, reference
    return beta * ((np.asarray(pc) - np.asarray(rc)) - (np.asarray(pr) - np.asarray(rr)))


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
                     rcfg, beta: float, seed: int, sample_params=None) -> list[dict]:
    """New pairs for discarded ``rows``: most vs least implicit-reward candidate among ``num_candidates``
    policy samples (+ the originals). Prompts whose candidates all coincide get no new pair. Conversational
    prompts are rendered with the chat template; sampling stops at EOS and at the next user turn.

    ``policy_params``: the train state's params (scored by :meth:`Trainer.pair_logps`; under LoRA the adapters);
    ``sample_params``: the same policy as plain model params for sampling (:meth:`Trainer.merged_params`;
    default ``policy_params``, which is that without LoRA)."""
    prompts = [r["prompt"] for r in rows]
    sample_params = policy_params if sample_params is None else sample_params
    samples = Sm.sample_responses(trainer.runtime, sample_params, prompts, rcfg.num_candidates,
                                  max_new_tokens=rcfg.max_new_tokens, seed=seed * 7919 + round_index,
                                  temperature=rcfg.temperature, top_p=rcfg.top_p, label=trainer.label + " · sampling")
    candidates = []
    for row, cands in zip(rows, samples):
        if rcfg.include_originals:
            cands = cands + [Sm.response_as_text(row["chosen"]), Sm.response_as_text(row["rejected"])]
        candidates.append(Sm.distinct_candidates(cands))

    def implicit_reward(pairs):
        pol, ref = trainer.pair_logps(policy_params, pairs, with_reference=True)  # reference: the trainer's pi_0
        return beta * (pol[0] - ref[0]), beta * (pol[1] - ref[1])

    new_rows = []
    for row, cands, scored in zip(rows, candidates, Sm.score_candidates(trainer.runtime, prompts, candidates,
                                                                       implicit_reward)):
        bw = Sm.best_and_worst(scored)
        if bw is None or cands[bw[0]] == cands[bw[1]]:
            continue
        new_rows.append({"id": f"{row['id']}/rs{round_index}", "prompt": row["prompt"],
                         "chosen": Sm.as_response(row["prompt"], cands[bw[0]]),
                         "rejected": Sm.as_response(row["prompt"], cands[bw[1]]), "resampled_from": row["id"]})
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
    flipped = {r["id"] for r in known if r["flipped"]}
    return flag_precision_recall(discarded_ids & {r["id"] for r in known}, flipped)


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        paths.write_json(path, obj, default=float)


def train(runtime: Runtime, inputs: TaskInputs, workdir: str, *, progress: bool = True) -> dict:
    """The ROPO loop over ``inputs.rows`` from ``inputs.params`` (pi_0, also the reference); per-round records,
    final evaluation (``eval`` split and the task's ``evaluate``), flag metrics when the flips are known, HF export."""
    cfg = runtime.cfg
    rcfg, beta, rounds = cfg.ropo, cfg.loss.beta, cfg.ropo.rounds
    params0 = runtime.share_base(inputs.params)  # pi_0: the reference (LoRA: the base, placed once for every round)
    current = [dict(r) for r in inputs.rows]
    original_rows = [dict(r) for r in inputs.rows]
    start = None  # the train-state params a theta-step continues from (None: pi_0 / fresh adapters)
    records = []
    trainer = None

    def theta_trainer(r, train_rows):
        return Trainer(runtime, os.path.join(workdir, f"round_{r}"), train_rows, params=params0, trainable=start,
                       pair_loss=ropo_pair_loss(rcfg, beta), eval_rows=inputs.eval_rows,
                       label=f"ROPO round {r + 1}/{rounds} · θ-step", progress=progress)

    for r in range(rounds):
        record_path = os.path.join(workdir, f"round_{r}", "round.json")
        if paths.exists(record_path) and r < rounds - 1:
            record = paths.read_json(record_path)
            records.append(record)
            current = record["next_rows"]
            if not rcfg.restart_from_initial:  # the next round starts from this round's final policy
                trainer = theta_trainer(r, record["train_rows"])
                trainer.maybe_restore()
                start = host_tree(trainer.state.params)
                trainer.close()
            continue
        trainer = theta_trainer(r, current)
        require_done(trainer.fit(), f"ROPO round {r + 1} θ-step")
        if r == rounds - 1:
            break
        # w-step over the pairs that survived tokenization (the trainer's pairs)
        pairs = trainer.pairs
        pol, ref = trainer.pair_logps(trainer.state.params, pairs, with_reference=True)  # reference: pi_0
        losses = per_pair_losses(pol, ref, kind=rcfg.filter_loss, alpha=rcfg.alpha, beta=beta)
        num_keep = int(round((1.0 - rcfg.filter_ratio) * len(pairs)))
        weights = ropo_weight_update(losses, num_keep)
        by_id = {row["id"]: row for row in current}
        kept = [by_id[p.id] for p, w in zip(pairs, weights) if w > 0]
        discarded = [by_id[p.id] for p, w in zip(pairs, weights) if w == 0]
        preemption.raise_if_requested(f"after the ROPO round {r + 1} w-step")
        new_rows = []
        if rcfg.rejection_sampling and discarded:
            new_rows = rejection_sample(trainer, trainer.state.params, discarded, round_index=r, rcfg=rcfg,
                                        beta=beta, seed=cfg.seed, sample_params=trainer.merged_params())
            preemption.raise_if_requested(f"after the ROPO round {r + 1} rejection sampling")
        flips = [bool(by_id[p.id].get("flipped")) for p in pairs] if all("flipped" in by_id[p.id] for p in pairs) else None
        record = {
            "round": r,
            "num_pairs": len(pairs),
            "ids": [p.id for p in pairs],
            "losses": [float(x) for x in losses],
            # u = beta * (h(x, y_w) - h(x, y_l)) per pair: where ROPO's loss differs from DPO's (u < -1.3 damps)
            "margins": [float(x) for x in implicit_margins(pol, ref, beta)],
            "flipped": flips,
            "weights": [float(x) for x in weights],
            "kept_ids": [row["id"] for row in kept],
            "discarded_ids": [row["id"] for row in discarded],
            "new_ids": [row["id"] for row in new_rows],
            **_flag_metrics(current, {row["id"] for row in discarded}),
            **({"flag_auroc": flag_auroc(losses, flips)} if flips is not None else {}),
            "train_rows": current,
            "next_rows": kept + new_rows,
            "train_metrics": _pair_metrics(pol, ref, beta, per_pair_losses(
                pol, ref, kind=rcfg.train_loss, alpha=rcfg.alpha, beta=beta)),
        }
        _write_json(record_path, record)
        records.append(record)
        current = kept + new_rows
        start = None if rcfg.restart_from_initial else host_tree(trainer.state.params)
        trainer.close()
    all_discarded = {i for rec in records for i in rec["discarded_ids"]}
    try:
        result = {
            "algorithm": "ropo", "status": "done", "step": int(jax.device_get(trainer.state.step)),
            **runtime.param_counts(),
            "rounds": [{k: v for k, v in rec.items()
                        if k not in ("train_rows", "next_rows", "losses", "margins", "flipped", "weights", "ids")}
                       for rec in records],
            **_flag_metrics(original_rows, all_discarded),
            **({"flag_auroc": records[0]["flag_auroc"]} if records and "flag_auroc" in records[0] else {}),
            "eval": trainer.evaluate(),
            "final_num_pairs": len(current),
        }
        if inputs.evaluate is not None:
            result.update(inputs.evaluate(trainer.merged_params(), rows=inputs.rows,
                                          clean_accuracy=result["eval"].get("rewards/accuracies")))
        result.update(trainer.maybe_export({"status": "done"}))
    finally:
        trainer.close()
    return result
