r"""Reward-model training on the shared trainer: Bradley-Terry on human pairs, plus APO's adversarial term.

The reward model (:class:`jaxpref.models.reward.RewardModel`: the decoder + a scalar head read at the last
response token) trains through :class:`jaxpref.train.Trainer` with ``scorer=sequence_rewards`` and no
reference, so sharding, accumulation, checkpoints and logging are the policy's. Each pair's loss is
:func:`jaxpref.losses.adversarial_rm_pair_losses` -- Bradley-Terry (``margin``, ``label_smoothing``) on
human pairs (``group`` 0), ``-log sigma(r_gold - r_sample)`` or ``-(r_gold - r_sample)`` on adversarial
pairs (``group`` 1) -- and :func:`weight_rows` sets per-pair weights so that the weighted mean over the
data is APO's objective divided by ``rank_weight + apo_weight``::

    L_RM = rank_weight * mean_human l + (apo_weight / K) * (1/P) sum_p sum_k l_pk

(each batch reduces ``sum w l / sum w``; with shuffled batches this is the objective up to that constant).

Standalone (``config.algorithm = "reward_model"``, e.g. ``configs/rm_tiny.py``): initialise from the
policy checkpoint (``config.model``: decoder kept, ``lm_head`` dropped, fresh head), train on the human
pairs, report held-out pair accuracy, export a HF ``*ForSequenceClassification`` directory.
Config keys (``config.reward_model``): ``train`` (a full ``config.train``-style section: the RM's own
optimizer and schedule), ``margin``, ``label_smoothing``, ``head_seed``.
"""

from __future__ import annotations

import ml_collections

from jaxpref import data as D
from jaxpref.losses import adversarial_rm_pair_losses
from jaxpref.models import reward as R
from jaxpref.train.logging import write_results
from jaxpref.train.trainer import Trainer, build_model, load_rows

HUMAN, ADVERSARIAL = 0, 1


def rm_pair_loss(rm_cfg, form: str = "ranking"):
    """A trainer pair loss over reward-model scores: :func:`adversarial_rm_pair_losses` by ``pair_group``."""
    margin = rm_cfg.get("margin", None) or None
    smoothing = rm_cfg.get("label_smoothing", 0.0)

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        del ref_chosen, ref_rejected
        losses = adversarial_rm_pair_losses(chosen, rejected, batch["pair_group"] == ADVERSARIAL, form=form,
                                            margin=margin, label_smoothing=smoothing)
        return losses, chosen, rejected

    return pair_loss


def weight_rows(human: list[dict], adversarial: list[dict], *, rank_weight: float = 1.0,
                apo_weight: float = 0.1) -> D.PreferenceDataset:
    """Human rows (group 0, weight ``rank_weight / N_h``) and adversarial rows (group 1, weight
    ``apo_weight / N_a``), both scaled by ``N_h + N_a`` so a plain pair weighs about 1. ``apo_weight = 0`` keeps
    the adversarial rows at weight 0: the base RM with the same batches (same compute)."""
    n_h, n_a = len(human), len(adversarial)
    total = n_h + n_a
    w_h = rank_weight / n_h * total if n_h else 0.0
    w_a = apo_weight / n_a * total if n_a else 0.0
    rows = [dict(r, group=HUMAN, weight=w_h) for r in human] + [dict(r, group=ADVERSARIAL, weight=w_a) for r in adversarial]
    if not any(r["weight"] > 0 for r in rows):
        raise ValueError("every reward-model pair has weight 0 (rank_weight and apo_weight both 0, or no pairs).")
    return D.PreferenceDataset(rows)


def rm_config(cfg) -> ml_collections.ConfigDict:
    """``cfg`` with ``train`` replaced by ``cfg.reward_model.train`` (the RM's own optimizer and schedule)."""
    out = cfg.copy_and_resolve_references()
    with out.unlocked():
        out.train = cfg.reward_model.train.copy_and_resolve_references()
    return out


def base_reward_params(lm_model, lm_params, seed: int = 0) -> tuple[R.RewardModel, dict]:
    """The base RM: the policy checkpoint's decoder with a fresh, seeded scalar head."""
    return R.RewardModel(lm_model.config), R.from_causal_lm(lm_params, lm_model.config, seed=seed)


def reward_trainer(cfg, workdir: str, rows, *, eval_rows=None, model_and_params, form: str = "ranking",
                   progress: bool = True) -> Trainer:
    """A :class:`Trainer` for the reward model on ``rows`` (with ``group``/``weight`` fields, or plain human pairs)."""
    return Trainer(rm_config(cfg), workdir, rows=rows, eval_rows=eval_rows, model_and_params=model_and_params,
                   pair_loss=rm_pair_loss(cfg.reward_model, form), scorer=R.sequence_rewards, reference="none",
                   progress=progress)


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Standalone reward-model training: init from ``config.model``, train, held-out accuracy, HF export."""
    rows, eval_rows = load_rows(cfg)
    lm_model, lm_params = build_model(cfg)
    model_and_params = base_reward_params(lm_model, lm_params, seed=cfg.reward_model.get("head_seed", 0))
    trainer = reward_trainer(cfg, workdir, rows, eval_rows=eval_rows, model_and_params=model_and_params,
                             progress=progress)
    try:
        summary = trainer.fit()
        result = {"algorithm": "reward_model", **summary}
        if trainer.eval_batcher is not None:
            ev = trainer.evaluate()
            result["eval"] = ev
            result["accuracy"] = ev["rewards/accuracies"]
        result.update(trainer.maybe_export(summary))
    finally:
        trainer.close()
    write_results(workdir, result)
    return result
