r"""Reward-model training: Bradley-Terry on human pairs, plus APO's adversarial term.

The reward model (:class:`jaxpref.models.reward.RewardModel`: the decoder + a scalar head read at the last
response token) trains through the shared :class:`~jaxpref.train.trainer.Trainer` on the reward-model
runtime (:meth:`Runtime.reward_model`: scorer = :func:`~jaxpref.models.reward.sequence_rewards`, no
reference), so sharding, accumulation, checkpoints and logging are the policy's. Each pair's loss is
:func:`jaxpref.losses.adversarial_rm_pair_losses` by its group -- Bradley-Terry (``margin``,
``label_smoothing``) on human pairs (group 0), ``-log sigma(r_gold - r_sample)`` or ``-(r_gold - r_sample)``
on adversarial pairs (group 1) -- and its weight is :func:`jaxpref.losses.adversarial_rm_pair_weights`
(scaled by the pair count), so a batch holding every pair reduces to APO's objective divided by
``rank_weight + apo_weight``::

    L_RM = rank_weight * mean_human l + (apo_weight / K) * (1/P) sum_p sum_k l_pk

(with shuffled batches each batch's weighted mean estimates it; tested against
:func:`jaxpref.losses.adversarial_rm_loss`).

Standalone (``config.algorithm = "reward_model"``, e.g. ``configs/rm_tiny.py``): initialise from the
policy checkpoint (decoder kept, ``lm_head`` dropped, fresh head), train on the human pairs, report
held-out pair accuracy, export a HF ``*ForSequenceClassification`` directory. Config keys
(``config.reward_model``): ``train`` (the RM's overrides of ``config.train``), ``margin``,
``label_smoothing``, ``head_seed``. With ``config.lora.rank > 0`` the decoder trains through adapters (the head
too unless ``lora.train_score_head = False``) and the export is the merged model.
"""

from __future__ import annotations

import numpy as np

from jaxpref.losses import adversarial_rm_pair_losses, adversarial_rm_pair_weights
from jaxpref.tasks import TaskInputs
from jaxpref.train.runtime import Runtime
from jaxpref.train.trainer import Trainer, require_done

HUMAN, ADVERSARIAL = 0, 1


def rm_pair_loss(rm_cfg, form: str = "ranking"):
    """A trainer pair loss over reward-model scores: :func:`adversarial_rm_pair_losses` by ``batch.group``."""
    margin = rm_cfg.margin or None
    smoothing = rm_cfg.label_smoothing

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        del ref_chosen, ref_rejected
        losses = adversarial_rm_pair_losses(chosen, rejected, batch.group == ADVERSARIAL, form=form,
                                            margin=margin, label_smoothing=smoothing)
        return losses, chosen, rejected

    return pair_loss


def rm_weights(groups, *, rank_weight: float, apo_weight: float) -> np.ndarray:
    """Per-pair weights of APO's RM objective (:func:`adversarial_rm_pair_weights`) times the pair count, so a
    plain pair weighs about 1. ``apo_weight = 0`` keeps the adversarial pairs at weight 0: the base RM with the
    same batches (same compute)."""
    groups = np.asarray(groups)
    w = np.asarray(adversarial_rm_pair_weights(groups == ADVERSARIAL, rank_weight=rank_weight, apo_weight=apo_weight))
    if not (w > 0).any():
        raise ValueError("every reward-model pair has weight 0 (rank_weight and apo_weight both 0, or no pairs).")
    return w * len(groups)


def train(runtime: Runtime, inputs: TaskInputs, workdir: str, *, progress: bool = True) -> dict:
    """Standalone reward-model training from the policy params: train, held-out accuracy, HF export."""
    rm = runtime.reward_model()
    trainer = Trainer(rm, workdir, inputs.rows, params=rm.reward_params_from(inputs.params),
                      eval_rows=inputs.eval_rows, pair_loss=rm_pair_loss(runtime.cfg.reward_model),
                      label="reward model", progress=progress)
    try:
        summary = trainer.fit()
        require_done(summary, "reward-model training")
        result = {"algorithm": "reward_model", **summary.as_dict(), **rm.param_counts(),
                  "tokenization": trainer.data_report()}
        if trainer.eval_batcher is not None:
            ev = trainer.evaluate()
            result["eval"] = ev
            result["accuracy"] = ev["rewards/accuracies"]
        result.update(trainer.maybe_export(summary))
    finally:
        trainer.close()
    return result
