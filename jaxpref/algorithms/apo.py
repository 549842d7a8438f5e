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
sharding (the policy's from ``config.train``, the RM's from ``config.reward_model.train`` overlaid on it),
on two runtimes that share the mesh and tokenizer (:meth:`Runtime.reward_model`). With LoRA
(``config.lora.rank > 0``) the two states are two adapter sets (the RM's with its head), each with its own
optimizer, on *one* placed copy of the SFT weights: the policy's frozen base, whose decoder arrays (without
``lm_head``) are also the RM's frozen backbone; the policy's reference is that base with adapters off. At the end of
every round one orbax checkpoint (``<workdir>/checkpoints``) holds **both** states with the round and
phase; inside a round, each phase's trainer checkpoints itself and the sample files are reused, so a run
killed anywhere continues to the same result (tested).

The **baseline** is the same code path with ``apo_weight = 0``: the adversarial pairs stay in the RM's
batches with weight 0 (same compute), i.e. an RM trained on human pairs only -- plain rejection sampling /
RM-DPO. Ablations: ``rank_weight = 0`` (no human-pair term), ``form = "diff"``; control:
``refresh_adversarial = False`` (round 1's golden-vs-SFT-sample pairs reused every round: the extra golden
answers without the game).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from jaxpref import data as D
from jaxpref import paths
from jaxpref.algorithms import reward_model as RMod
from jaxpref.algorithms import sampling as Sm
from jaxpref.errors import ConfigError
from jaxpref.losses import dpo_loss
from jaxpref.tasks import TaskInputs
from jaxpref.train import preemption
from jaxpref.train.checkpoint import Checkpointer, abstract_with_shardings
from jaxpref.train.export import export_trained
from jaxpref.train.runtime import Runtime, host_tree
from jaxpref.train.trainer import Trainer, require_done

log = logging.getLogger(__name__)

PHASES = ("rm_samples", "rm_train", "policy_samples", "policy_train")
POLICY_UPDATES = ("rejection_sampling", "dpo")


# ---- policy losses -----------------------------------------------------------------------------------


def rejection_sampling_pair_loss(beta: float):
    """SFT on the chosen (best-of-K) response: ``-log pi(y_best|x) / |y_best|``; the rejected side is unused.
    Rewards are reported as ``beta * log(pi/pi_ref)`` for the usual metrics."""

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        losses = -chosen / jax.numpy.maximum(batch.chosen_lengths, 1.0)
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


def policy_train_section(runtime: Runtime, round_index: int):
    """The policy's train section with the round's learning rate (``apo.policy_learning_rates``; the last repeats)."""
    lrs = list(runtime.cfg.apo.policy_learning_rates or ())
    out = runtime.train_cfg
    if lrs:
        out.learning_rate = float(lrs[min(round_index, len(lrs) - 1)])
    return out


# ---- the game ----------------------------------------------------------------------------------------


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        paths.write_json(path, obj)


def _read_json(path: str):
    return paths.read_json(path)


class Game:
    """The APO loop over a task's inputs.

    Args:
      runtime: the policy's runtime (the RM's is derived from it).
      workdir: everything goes here (``round_<t>/``, ``checkpoints/``).
      inputs: ``params`` (the SFT policy: start, DPO reference and the RM's base), ``rows`` (human pairs for the
        RM), ``rm_prompts`` (``[{"id", "prompt", "golden"}]``: prompts whose golden answer faces the policy's
        samples), ``policy_prompts`` (``[{"id", "prompt"}]``), ``eval_rows`` (held-out pairs for RM accuracy),
        ``golden_eval`` (held-out prompts with golden answers), ``evaluate`` (per-round policy metrics).
    """

    def __init__(self, runtime: Runtime, workdir: str, inputs: TaskInputs, *, progress: bool = True):
        cfg = runtime.cfg
        acfg = cfg.apo
        if acfg.rank_weight + acfg.apo_weight <= 0:
            raise ConfigError("config.apo.rank_weight and apo_weight must not both be 0.")
        if not inputs.rm_prompts or not inputs.policy_prompts:
            raise ConfigError("APO needs prompts with golden answers and policy prompts; the task supplied none.")
        self.cfg, self.workdir, self.progress = cfg, workdir, progress
        self.runtime, self.rm_runtime = runtime, runtime.reward_model()
        # the SFT weights: start, reference and the RM's base (with LoRA placed once; the RM's backbone is the same
        # device arrays, so both models' frozen weights are one copy)
        self.sft_params = runtime.share_base(inputs.params)
        self.human_rows, self.rm_prompts, self.policy_prompts = list(inputs.rows), inputs.rm_prompts, inputs.policy_prompts
        self.rm_eval_rows, self.golden_eval, self.evaluate_policy = inputs.eval_rows, inputs.golden_eval, inputs.evaluate
        self.gold_reward = inputs.gold_reward
        self.rm_base = self.rm_runtime.reward_params_from(self.sft_params)
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)

    def _label(self, r: int, what: str) -> str:
        return f"APO round {r + 1}/{self.cfg.apo.rounds} · {what}"

    # -- phases --

    def _sample(self, params, prompts, seed, label):
        a = self.cfg.apo
        return Sm.sample_responses(self.runtime, params, [p["prompt"] for p in prompts], a.samples_per_prompt,
                                   max_new_tokens=a.max_new_tokens, seed=seed, temperature=a.temperature,
                                   top_p=a.top_p, label=label)

    def golden_vs_samples(self, policy_params, prompts: list[dict], *, seed: int, tag: str, label: str) -> list[dict]:
        """(golden answer, policy sample) pairs, K per prompt, ids ``"<id>/<tag>_<k>"``; empty samples and samples
        equal to the golden answer are left out."""
        samples = self._sample(policy_params, prompts, seed, label)
        return [{"id": f"{p['id']}/{tag}_{k}", "prompt": p["prompt"], "chosen": Sm.as_response(p["prompt"], p["golden"]),
                 "rejected": Sm.as_response(p["prompt"], c)}
                for p, cands in zip(prompts, samples) for k, c in enumerate(cands)
                if c.strip() and c != Sm.response_as_text(p["golden"])]

    def adversarial_rows(self, policy_params, round_index: int) -> list[dict]:
        return self.golden_vs_samples(policy_params, self.rm_prompts, seed=self.cfg.seed * 1009 + 2 * round_index,
                                      tag=f"adv{round_index}", label=self._label(round_index, "RM samples"))

    def rm_trainer(self, round_index: int, adversarial: list[dict], previous_rm_params=None) -> Trainer:
        """The round's RM session; ``previous_rm_params``: the last round's RM train-state params (continued from
        unless ``apo.rm_reinit``)."""
        a = self.cfg.apo
        rows = self.human_rows + adversarial
        groups = [RMod.HUMAN] * len(self.human_rows) + [RMod.ADVERSARIAL] * len(adversarial)
        weights = RMod.rm_weights(groups, rank_weight=a.rank_weight, apo_weight=a.apo_weight)
        start = None if a.rm_reinit else previous_rm_params
        return Trainer(self.rm_runtime, os.path.join(self.workdir, f"round_{round_index}", "rm"), rows,
                       params=self.rm_base, trainable=start, weights=weights, groups=groups, eval_rows=self.rm_eval_rows,
                       pair_loss=RMod.rm_pair_loss(self.cfg.reward_model, a.form),
                       label=self._label(round_index, "reward model"), progress=self.progress)

    def policy_rows(self, policy_params, rm: Trainer, round_index: int) -> tuple[list[dict], dict]:
        """Best-vs-worst pairs of K policy samples by the RM, and how the RM ranks those samples against the task's
        gold reward (:meth:`_agreement`)."""
        samples = self._sample(policy_params, self.policy_prompts, self.cfg.seed * 1009 + 2 * round_index + 1,
                               self._label(round_index, "policy samples"))
        candidates = [Sm.distinct_candidates(cands) for cands in samples]
        rm_params = rm.state.params
        scores = Sm.score_candidates(rm, [p["prompt"] for p in self.policy_prompts], candidates,
                                     lambda pairs: rm.pair_logps(rm_params, pairs))
        rows = []
        dpo = self.cfg.apo.policy_update == "dpo"
        for p, cands, scored in zip(self.policy_prompts, candidates, scores):
            bw = Sm.best_and_worst(scored)
            if bw is None or (dpo and bw[0] == bw[1]):
                continue
            rows.append({"id": f"{p['id']}/pol{round_index}", "prompt": p["prompt"],
                         "chosen": Sm.as_response(p["prompt"], cands[bw[0]]),
                         "rejected": Sm.as_response(p["prompt"], cands[bw[1]]),
                         "rm_best": scored[bw[0]], "rm_worst": scored[bw[1]]})
        if not rows:
            raise RuntimeError(f"round {round_index}: no policy prompt produced a usable sample pair.")
        return rows, self._agreement(candidates, scores)

    def _agreement(self, candidates: list[list[str]], scores: list[dict[int, float]]) -> dict:
        """:func:`~jaxpref.eval.metrics.best_of_k_agreement` of the RM's scores of the policy's own samples with the
        task's gold reward (empty when the task has none): the RM metric that matters for best-of-K."""
        if self.gold_reward is None:
            return {}
        from jaxpref.eval.metrics import best_of_k_agreement

        rm, gold = [], []
        for p, cands, scored in zip(self.policy_prompts, candidates, scores):
            if len(scored) >= 2:
                keys = sorted(scored)
                rm.append([scored[k] for k in keys])
                gold.append([self.gold_reward(p["prompt"], cands[k]) for k in keys])
        return best_of_k_agreement(rm, gold) if rm else {}

    def policy_trainer(self, round_index: int, rows: list[dict], start_params) -> Trainer:
        """The round's policy session from ``start_params`` (the last round's policy train-state params; None: the
        SFT policy); the reference is the SFT policy."""
        return Trainer(self.runtime, os.path.join(self.workdir, f"round_{round_index}", "policy"), rows,
                       params=self.sft_params, trainable=start_params, pair_loss=policy_pair_loss(self.cfg),
                       train_cfg=policy_train_section(self.runtime, round_index),
                       label=self._label(round_index, "policy"), progress=self.progress)

    # -- metrics --

    def rm_metrics(self, rm: Trainer, policy_params, round_index: int) -> dict:
        """RM accuracy on held-out human pairs and on golden-vs-sample pairs of ``policy_params`` (model params, or a
        function returning them when needed)."""
        out = {}
        if self.rm_eval_rows is not None:
            out["rm_accuracy"] = rm.evaluate()["rewards/accuracies"]
        if self.golden_eval:
            policy_params = policy_params() if callable(policy_params) else policy_params
            rows = self.golden_vs_samples(policy_params, self.golden_eval, seed=self.cfg.seed * 1009 + 7919 + round_index,
                                          tag="g", label=self._label(round_index, "RM evaluation samples"))
            if rows:
                out["rm_golden_accuracy"] = rm.evaluate(rm.batcher_for(D.PreferenceDataset(rows)))["rewards/accuracies"]
        return out

    # -- the loop --

    def _save_round(self, round_index: int, policy: Trainer, rm: Trainer, records: list[dict]) -> None:
        self.checkpointer.save(round_index, {"policy": policy.state, "rm": rm.state},
                               {"round": round_index, "phase": PHASES[-1], "records": records})
        self.checkpointer.wait()

    def _restore_round(self, round_index: int) -> tuple[dict, dict, list[dict]]:
        """Restore both states of round ``round_index`` from the combined checkpoint (restore targets built from
        the round's saved pairs); returns ``(policy params, rm params, records)`` on the host."""
        rdir = os.path.join(self.workdir, f"round_{round_index}")
        rm = self.rm_trainer(round_index, _read_json(os.path.join(rdir, "adversarial.json")))
        policy = self.policy_trainer(round_index, _read_json(os.path.join(rdir, "policy_pairs.json")), None)
        abstract = {"policy": abstract_with_shardings(policy.state, policy.shardings),
                    "rm": abstract_with_shardings(rm.state, rm.shardings)}
        states, meta, _ = self.checkpointer.restore(abstract, step=round_index)
        out = host_tree(states["policy"].params), host_tree(states["rm"].params), list(meta["records"])
        policy.close()
        rm.close()
        return out

    def play(self) -> dict:
        """Every round not done yet; returns the records and the final train-state params of both models (host
        arrays; with LoRA the adapter trees)."""
        rounds = self.cfg.apo.rounds
        policy_params, rm_params, records = None, None, []  # train-state params; None = the SFT policy / a fresh RM
        done = self.checkpointer.latest_step()
        if done is not None:
            policy_params, rm_params, records = self._restore_round(done)
            log.info("APO: resuming after round %d", done + 1)
        start = 0 if done is None else done + 1
        for r in range(start, rounds):
            log.info("APO round %d/%d", r + 1, rounds)
            rdir = os.path.join(self.workdir, f"round_{r}")
            adv_path, pol_path = os.path.join(rdir, "adversarial.json"), os.path.join(rdir, "policy_pairs.json")
            sampler = _Lazy(lambda p=policy_params: self.runtime.merge(self.sft_params, p))  # pi_{t-1}: model params
            # (1) adversarial pairs from pi_{t-1}
            if not paths.exists(adv_path):
                if r > 0 and not self.cfg.apo.refresh_adversarial:  # the control: round 1's pairs, every round
                    rows = _read_json(os.path.join(self.workdir, "round_0", "adversarial.json"))
                else:
                    rows = self.adversarial_rows(sampler(), r)
                preemption.raise_if_requested(f"in APO round {r + 1} while sampling for the RM")
                _write_json(adv_path, rows)
            adversarial = _read_json(adv_path)
            # (2) the RM (resumes from its own checkpoint inside the phase)
            rm = self.rm_trainer(r, adversarial, rm_params)
            require_done(rm.fit(), f"APO round {r + 1} reward-model training")
            record = {"round": r + 1, "num_adversarial": len(adversarial), **self.rm_metrics(rm, sampler, r)}
            # (3) policy pairs scored by the new RM
            agreement_path = os.path.join(rdir, "policy_agreement.json")
            if not paths.exists(pol_path):
                rows, agreement = self.policy_rows(sampler(), rm, r)
                preemption.raise_if_requested(f"in APO round {r + 1} while sampling for the policy")
                _write_json(agreement_path, agreement)  # first: the pairs' file marks the phase done
                _write_json(pol_path, rows)
            policy_rows = _read_json(pol_path)
            if paths.exists(agreement_path):  # the RM's ranking of the policy's own samples vs the gold reward
                record.update(_read_json(agreement_path))
            # (4) pi_{t-1} -> pi_t
            policy = self.policy_trainer(r, policy_rows, policy_params)
            require_done(policy.fit(), f"APO round {r + 1} policy training")
            policy_params = host_tree(policy.state.params)
            rm_params = host_tree(rm.state.params)
            record.update(num_policy_pairs=len(policy_rows),
                          rm_best_minus_worst=float(np.mean([p["rm_best"] - p["rm_worst"] for p in policy_rows])))
            if self.evaluate_policy is not None:
                record.update(self.evaluate_policy(policy.merged_params()))
            records.append(record)
            self._save_round(r, policy, rm, records)
            log.info("APO round %d: %s", r + 1, {k: v for k, v in record.items() if isinstance(v, float)})
            policy.close()
            rm.close()
        self.checkpointer.close()
        return {"rounds": records, "policy_params": policy_params, "rm_params": rm_params}


def train(runtime: Runtime, inputs: TaskInputs, workdir: str, *, progress: bool = True) -> dict:
    """Play the game; results hold the per-round records (and the last round's metrics at the top level);
    the final policy and RM are exported (``hf_export``, ``hf_export_rm``) when ``config.export.hf``."""
    game = Game(runtime, workdir, inputs, progress=progress)
    out = game.play()
    final = out["rounds"][-1] if out["rounds"] else {}
    rm_counts = game.rm_runtime.param_counts()
    result = {"algorithm": "apo", "status": "done", "rounds": out["rounds"], **runtime.param_counts(),
              "rm_trainable_params": rm_counts["trainable_params"], "rm_total_params": rm_counts["total_params"],
              **{k: v for k, v in final.items() if k != "round"}}
    if runtime.cfg.export.hf:
        result.update(export_trained(runtime, game.sft_params, out["policy_params"], os.path.join(workdir, "hf_export"),
                                     adapter_dir=os.path.join(workdir, "hf_adapter")))
        result["hf_export_rm"] = export_trained(game.rm_runtime, game.rm_base, out["rm_params"],
                                                os.path.join(workdir, "hf_export_rm"))["hf_export"]
    return result


class _Lazy:
    """A value computed on first call (a merged policy that a resumed phase may not need)."""

    def __init__(self, fn):
        self._fn, self._done, self._value = fn, False, None

    def __call__(self):
        if not self._done:
            self._value, self._done = self._fn(), True
        return self._value
