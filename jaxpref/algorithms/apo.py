r"""APO: *adversarial* preference optimization (Cheng et al., arXiv 2311.08045, ACL Findings 2024).

(Not TRL's anchored preference optimization ``apo_zero``/``apo_down``, which are DPO loss types.)

The policy and a reward model (RM) play a min-max game: the policy maximises the RM's score of its samples,
the RM minimises the gap between golden answers and policy samples, and KL anchors keep the policy near
``pi_ref`` and the RM faithful to human preferences (which reduces to the Bradley-Terry term on human
pairs). RM objective (:func:`jaxpref.losses.adversarial_rm_loss`)::

    L_RM = c_rank * mean_human -log sigma(r(y+) - r(y-)) + (c_apo / K) * (1/P) sum_p sum_k l(r(y_gold,p) - r(y_pk))

A **round** ``t = 1..T`` (phases, each resumable):

1. ``rm_samples``: K samples per RM prompt from ``pi_{t-1}`` (temperature ``apo.temperature``) -> adversarial
   pairs (golden answer, sample); written to ``round_<t>/adversarial.json``.
2. ``rm_train``: the RM -- re-initialised from its base every round (``apo.rm_reinit``; the paper found
   continuing worse) -- trains on human pairs + adversarial pairs (its own optax state and schedule,
   ``config.reward_model.train``).
3. ``policy_samples``: K samples per policy prompt from ``pi_{t-1}``, scored by the new RM; best and worst
   of K -> ``round_<t>/policy_pairs.json``.
4. ``policy_train``: ``pi_{t-1} -> pi_t`` by rejection sampling (SFT on the best of K) or DPO (best vs
   worst; the SFT policy is the reference anchor), learning rate ``apo.policy_learning_rates[t-1]``.

Two :class:`jaxpref.train.TrainState` s live in one program, each with its own optimizer, schedule and
sharding (the policy's from ``config.train``, the RM's from ``config.reward_model.train``). At the end of
every round one orbax checkpoint (``<workdir>/checkpoints``) holds **both** states with the round and
phase; inside a round, each phase's trainer checkpoints itself and the sample files are reused, so a run
killed anywhere continues to the same result (tested).

The **baseline** is the same code path with ``apo_weight = 0``: the adversarial pairs stay in the RM's
batches with weight 0 (same compute), i.e. an RM trained on human pairs only -- plain rejection sampling /
RM-DPO. Ablations: ``rank_weight = 0`` (no human-pair term), ``form = "diff"``.
"""

from __future__ import annotations

import json
import logging
import os
import types

import jax
import numpy as np

from jaxpref import data as D
from jaxpref.algorithms import reward_model as RMod
from jaxpref.algorithms import sampling as Sm
from jaxpref.losses import dpo_loss
from jaxpref.train.checkpoint import Checkpointer, abstract_with_shardings
from jaxpref.train.logging import write_results
from jaxpref.train.trainer import (
    ConfigError,
    Trainer,
    build_model,
    build_tokenizer,
    host_tree,
    load_rows,
    tokenize_options,
)

log = logging.getLogger(__name__)

PHASES = ("rm_samples", "rm_train", "policy_samples", "policy_train")
POLICY_UPDATES = ("rejection_sampling", "dpo")


# ---- policy losses -----------------------------------------------------------------------------------


def rejection_sampling_pair_loss(beta: float):
    """SFT on the chosen (best-of-K) response: ``-log pi(y_best|x) / |y_best|``; the rejected side is unused.
    Rewards are reported as ``beta * log(pi/pi_ref)`` for the usual metrics."""

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        losses = -chosen / jax.numpy.maximum(batch["chosen_lengths"], 1.0)
        return losses, beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)

    return pair_loss


def policy_pair_loss(cfg):
    update = cfg.apo.policy_update
    if update == "rejection_sampling":
        return rejection_sampling_pair_loss(cfg.loss.beta)
    if update == "dpo":
        beta = cfg.loss.beta

        def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
            return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, loss_type="sigmoid", beta=beta)

        return pair_loss
    raise ConfigError(f"config.apo.policy_update must be one of {POLICY_UPDATES}, got {update!r}.")


def policy_round_config(cfg, round_index: int):
    """``cfg`` with the round's policy learning rate (``apo.policy_learning_rates``; the last one repeats)."""
    lrs = list(cfg.apo.get("policy_learning_rates", ()) or ())
    out = cfg.copy_and_resolve_references()
    if lrs:
        out.train.learning_rate = float(lrs[min(round_index, len(lrs) - 1)])
    return out


# ---- the game ----------------------------------------------------------------------------------------


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f)
        os.replace(path + ".tmp", path)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


class Game:
    """The APO loop over prepared inputs (real data or the gold-reward task build these).

    Args:
      cfg: run config (``apo``, ``reward_model``, ``train``, ``loss`` ...).
      workdir: everything goes here (``round_<t>/``, ``checkpoints/``).
      policy_model, sft_params: the policy and its starting point (also the DPO reference and the RM's base).
      human_rows: human preference pairs for the RM.
      rm_prompts: ``[{"id", "prompt", "golden"}]`` -- prompts whose golden answer faces the policy's samples.
      policy_prompts: ``[{"id", "prompt"}]`` for the policy step.
      rm_eval_rows: held-out clean pairs for RM accuracy (optional).
      golden_eval: ``[{"id", "prompt", "golden"}]`` held-out prompts for RM golden-vs-sample accuracy (optional).
      evaluate_policy: ``params -> dict`` of per-round policy metrics (optional).
    """

    def __init__(self, cfg, workdir: str, *, policy_model, sft_params, human_rows, rm_prompts, policy_prompts,
                 rm_eval_rows=None, golden_eval=None, evaluate_policy=None, progress: bool = True):
        acfg = cfg.apo
        if acfg.form not in ("ranking", "diff"):
            raise ConfigError(f"config.apo.form must be 'ranking' or 'diff', got {acfg.form!r}.")
        if acfg.rank_weight < 0 or acfg.apo_weight < 0 or acfg.rank_weight + acfg.apo_weight <= 0:
            raise ConfigError("config.apo.rank_weight and apo_weight must be >= 0 and not both 0.")
        policy_pair_loss(cfg)  # validates policy_update
        self.cfg, self.workdir, self.progress = cfg, workdir, progress
        self.policy_model, self.sft_params = policy_model, sft_params
        self.human_rows, self.rm_prompts, self.policy_prompts = list(human_rows), rm_prompts, policy_prompts
        self.rm_eval_rows, self.golden_eval, self.evaluate_policy = rm_eval_rows, golden_eval, evaluate_policy
        self.rm_base = RMod.base_reward_params(policy_model, sft_params, seed=cfg.reward_model.get("head_seed", 0))
        self.sampler = types.SimpleNamespace(model=policy_model, tokenizer=build_tokenizer(cfg, policy_model.config),
                                             tok_options=tokenize_options(cfg))
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)

    # -- phases --

    def _sample(self, params, prompts, seed):
        a = self.cfg.apo
        return Sm.sample_responses(self.sampler, params, [p["prompt"] for p in prompts], int(a.samples_per_prompt),
                                   max_new_tokens=int(a.max_new_tokens), seed=seed, temperature=a.temperature,
                                   top_p=a.top_p)

    def golden_vs_samples(self, policy_params, prompts: list[dict], *, seed: int, tag: str) -> list[dict]:
        """(golden answer, policy sample) pairs, K per prompt, ids ``"<id>/<tag>_<k>"``; empty samples and samples
        equal to the golden answer are left out."""
        samples = self._sample(policy_params, prompts, seed=seed)
        return [{"id": f"{p['id']}/{tag}_{k}", "prompt": p["prompt"], "chosen": p["golden"], "rejected": c}
                for p, cands in zip(prompts, samples) for k, c in enumerate(cands) if c.strip() and c != p["golden"]]

    def adversarial_rows(self, policy_params, round_index: int) -> list[dict]:
        return self.golden_vs_samples(policy_params, self.rm_prompts, seed=self.cfg.seed * 1009 + 2 * round_index,
                                      tag=f"adv{round_index}")

    def rm_trainer(self, round_index: int, adversarial: list[dict], previous_rm_params=None) -> Trainer:
        a = self.cfg.apo
        rows = RMod.weight_rows(self.human_rows, adversarial, rank_weight=a.rank_weight, apo_weight=a.apo_weight)
        model, base = self.rm_base
        start = base if (a.rm_reinit or previous_rm_params is None) else previous_rm_params
        return RMod.reward_trainer(self.cfg, os.path.join(self.workdir, f"round_{round_index}", "rm"), rows,
                                   eval_rows=self.rm_eval_rows, model_and_params=(model, start), form=a.form,
                                   progress=self.progress)

    def policy_rows(self, policy_params, rm: Trainer, round_index: int) -> list[dict]:
        samples = self._sample(policy_params, self.policy_prompts, seed=self.cfg.seed * 1009 + 2 * round_index + 1)
        candidates = [list(dict.fromkeys(c for c in cands if c.strip())) for cands in samples]
        rm_params = rm.state.params
        scores = Sm.score_candidates(rm, [p["prompt"] for p in self.policy_prompts], candidates,
                                     lambda pairs: rm.pair_logps(rm_params, pairs))
        rows = []
        dpo = self.cfg.apo.policy_update == "dpo"
        for p, cands, scored in zip(self.policy_prompts, candidates, scores):
            bw = Sm.best_and_worst(scored)
            if bw is None or (dpo and bw[0] == bw[1]):
                continue
            rows.append({"id": f"{p['id']}/pol{round_index}", "prompt": p["prompt"], "chosen": cands[bw[0]],
                         "rejected": cands[bw[1]], "rm_best": scored[bw[0]], "rm_worst": scored[bw[1]]})
        if not rows:
            raise RuntimeError(f"round {round_index}: no policy prompt produced a usable sample pair.")
        return rows

    def policy_trainer(self, round_index: int, rows: list[dict], start_params) -> Trainer:
        return Trainer(policy_round_config(self.cfg, round_index), os.path.join(self.workdir, f"round_{round_index}", "policy"),
                       rows=D.PreferenceDataset(rows), model_and_params=(self.policy_model, start_params),
                       reference_params=self.sft_params, pair_loss=policy_pair_loss(self.cfg), progress=self.progress)

    # -- metrics --

    def rm_metrics(self, rm: Trainer, policy_params, round_index: int) -> dict:
        out = {}
        if self.rm_eval_rows is not None:
            out["rm_accuracy"] = rm.evaluate()["rewards/accuracies"]
        if self.golden_eval:
            rows = self.golden_vs_samples(policy_params, self.golden_eval, seed=self.cfg.seed * 1009 + 7919 + round_index,
                                          tag="g")
            if rows:
                out["rm_golden_accuracy"] = rm.evaluate(rm.batcher_for(D.PreferenceDataset(rows)))["rewards/accuracies"]
        return out

    # -- the loop --

    def _save_round(self, round_index: int, policy: Trainer, rm: Trainer, records: list[dict]) -> None:
        self.checkpointer.save(round_index, {"policy": policy.state, "rm": rm.state},
                               {"round": round_index, "phase": PHASES[-1], "records": records})
        self.checkpointer.wait()

    def _restore_round(self, round_index: int) -> tuple[dict, dict, list[dict]]:
        """Rebuild round ``round_index``'s trainers from its saved pairs and restore both states from the
        combined checkpoint; returns ``(policy params, rm params, records)`` on the host."""
        rdir = os.path.join(self.workdir, f"round_{round_index}")
        rm = self.rm_trainer(round_index, _read_json(os.path.join(rdir, "adversarial.json")))
        policy = self.policy_trainer(round_index, _read_json(os.path.join(rdir, "policy_pairs.json")), self.sft_params)
        abstract = {"policy": abstract_with_shardings(policy.state, policy.shardings),
                    "rm": abstract_with_shardings(rm.state, rm.shardings)}
        states, meta, _ = self.checkpointer.restore(abstract, step=round_index)
        out = host_tree(states["policy"].params), host_tree(states["rm"].params), list(meta["records"])
        policy.close()
        rm.close()
        return out

    def play(self) -> dict:
        a = self.cfg.apo
        rounds = int(a.rounds)
        policy_params, rm_params, records = self.sft_params, None, []
        done = self.checkpointer.latest_step()
        if done is not None:
            policy_params, rm_params, records = self._restore_round(done)
            log.info("APO: resuming after round %d", done)
        start = 0 if done is None else done + 1
        for r in range(start, rounds):
            rdir = os.path.join(self.workdir, f"round_{r}")
            adv_path, pol_path = os.path.join(rdir, "adversarial.json"), os.path.join(rdir, "policy_pairs.json")
            # (1) adversarial pairs from pi_{t-1}
            if not os.path.exists(adv_path):
                _write_json(adv_path, self.adversarial_rows(policy_params, r))
            adversarial = _read_json(adv_path)
            # (2) the RM (resumes from its own checkpoint inside the phase)
            rm = self.rm_trainer(r, adversarial, rm_params)
            rm.fit()
            record = {"round": r + 1, "num_adversarial": len(adversarial), **self.rm_metrics(rm, policy_params, r)}
            # (3) policy pairs scored by the new RM
            if not os.path.exists(pol_path):
                _write_json(pol_path, self.policy_rows(policy_params, rm, r))
            policy_rows = _read_json(pol_path)
            # (4) pi_{t-1} -> pi_t
            policy = self.policy_trainer(r, policy_rows, policy_params)
            policy.fit()
            policy_params = host_tree(policy.state.params)
            rm_params = host_tree(rm.state.params)
            record.update(num_policy_pairs=len(policy_rows),
                          rm_best_minus_worst=float(np.mean([p["rm_best"] - p["rm_worst"] for p in policy_rows])))
            if self.evaluate_policy is not None:
                record.update(self.evaluate_policy(policy.state.params))
            records.append(record)
            self._save_round(r, policy, rm, records)
            log.info("APO round %d: %s", r + 1, {k: v for k, v in record.items() if isinstance(v, float)})
            policy.close()
            rm.close()
        self.checkpointer.close()
        return {"rounds": records, "policy_params": policy_params, "rm_params": rm_params}


# ---- entry points -------------------------------------------------------------------------------------


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """``python -m jaxpref.main`` on real data: human pairs from ``config.data``; golden answers from the
    rows' ``apo.golden_field``; a seeded ``apo.policy_prompt_fraction`` of the rows' prompts feeds the policy
    step. Exports the final policy (``hf_export``) and RM (``hf_export_rm``)."""
    from jaxpref import models as M

    rows, eval_rows = load_rows(cfg)
    field = cfg.apo.golden_field
    missing = [r["id"] for r in rows if not isinstance(r.get(field), str) or not r.get(field).strip()]
    if missing:
        raise D.DataError(f"APO needs a golden answer in field {field!r} of every row; {len(missing)} rows lack it "
                          f"(first: {missing[0]!r}). Set config.apo.golden_field.")
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    n_policy = max(1, int(round(cfg.apo.policy_prompt_fraction * len(rows))))
    policy_prompts = [{"id": rows[i]["id"], "prompt": rows[i]["prompt"]} for i in order[:n_policy]]
    rm_prompts = [{"id": r["id"], "prompt": r["prompt"], "golden": r[field]} for r in rows]
    golden_eval = ([{"id": r["id"], "prompt": r["prompt"], "golden": r[field]} for r in eval_rows if r.get(field)]
                   if eval_rows is not None else None)
    model, params = build_model(cfg)
    game = Game(cfg, workdir, policy_model=model, sft_params=params, human_rows=rows, rm_prompts=rm_prompts,
                policy_prompts=policy_prompts, rm_eval_rows=eval_rows, golden_eval=golden_eval, progress=progress)
    out = game.play()
    result = {"algorithm": "apo", "status": "done", "rounds": out["rounds"]}
    if cfg.get("export", {}).get("hf", True) and jax.process_index() == 0:
        result["hf_export"] = M.save_pretrained(model, out["policy_params"], os.path.join(workdir, "hf_export"))
        result["hf_export_rm"] = M.save_pretrained(game.rm_base[0], out["rm_params"],
                                                   os.path.join(workdir, "hf_export_rm"))
    write_results(workdir, result)
    return result


def run_on_task(cfg, td, rows, workdir: str, *, progress: bool = False) -> dict:
    """APO on the gold-reward task: human pairs = the task's pairs; golden answer = the gold-optimal response;
    policy prompts = ``task.num_policy_prompts`` fresh prompts; per round the policy's gold reward, win rate and
    KL on held-out prompts, RM accuracy on held-out clean pairs and on golden-vs-sample pairs."""
    from jaxpref.eval import synthetic as S
    from jaxpref.eval.experiment import evaluate_policy

    task = td.task
    golden = lambda p: " " + S.to_text(task.target(p))  # noqa: E731
    rm_prompts = []
    for r in rows:
        p = [int(t) for t in r["prompt"].split()]
        rm_prompts.append({"id": r["id"], "prompt": r["prompt"], "golden": golden(p)})
    rng = np.random.default_rng(cfg.seed + 11)
    n_policy = int(cfg.task.get("num_policy_prompts", 512))
    policy_prompts = [{"id": f"pp:{i}", "prompt": S.to_text(p)} for i, p in enumerate(task.sample_prompts(rng, n_policy))]
    golden_eval = [{"id": f"ev:{i}", "prompt": S.to_text(p), "golden": golden(p)} for i, p in enumerate(td.eval_prompts)]
    game = Game(cfg, workdir, policy_model=td.model, sft_params=td.sft_params, human_rows=rows, rm_prompts=rm_prompts,
                policy_prompts=policy_prompts, rm_eval_rows=td.eval_rows, golden_eval=golden_eval,
                evaluate_policy=lambda params: evaluate_policy(td, params, seed=cfg.seed), progress=progress)
    out = game.play()
    final = out["rounds"][-1]
    return {"algorithm": "apo", "rounds": out["rounds"], "sft_gold_reward": td.sft_eval["gold_reward_sampled"],
            **{k: final[k] for k in ("gold_reward", "gold_reward_greedy", "win_rate", "kl", "rm_accuracy",
                                     "rm_golden_accuracy") if k in final}}
