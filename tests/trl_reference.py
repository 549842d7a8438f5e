"""Runs TRL 1.16's own ``DPOTrainer._compute_loss`` on given per-sequence log-probs.

TRL has no standalone loss function: its loss formulas live inside ``DPOTrainer._compute_loss``, which
takes a model and a batch. We call that very method on a bare ``DPOTrainer`` instance whose model is a
stub returning the per-token log-probs we choose, with the reference log-probs passed precomputed, so
every formula under test is TRL's code, not a transcription.

Layout: each sequence gets ``width`` completion-mask positions; the stub puts the whole sequence
log-prob at the first scored position and zeros elsewhere, so TRL's ``sum(dim=1)`` returns it, while
``completion_mask.sum`` gives the lengths used by ``ipo``/``sigmoid_norm``.
"""

from __future__ import annotations

import collections
import types

import numpy as np
import torch
from trl import DPOTrainer

TRL_FILE = "trl/trainer/dpo_trainer.py (trl==1.16.0), DPOTrainer._compute_loss"


class _StubModel(torch.nn.Module):
    def __init__(self, per_token_logps: torch.Tensor):
        super().__init__()
        self.per_token_logps = per_token_logps
        self.train()

    def forward(self, **kwargs):
        lp = self.per_token_logps
        return types.SimpleNamespace(
            log_probs=lp,
            entropy=torch.zeros_like(lp),
            mean_logits=torch.zeros_like(lp),
            is_top1=torch.zeros_like(lp, dtype=torch.bool),
        )


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def gather_for_metrics(x):
        return x


def trl_dpo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    loss_type="sigmoid",
    loss_weights=None,
    beta=0.1,
    label_smoothing=0.0,
    chosen_lengths=None,
    rejected_lengths=None,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=1.0,
    discopop_tau=0.05,
) -> float:
    """TRL's batch loss (mean over pairs, weighted sum over loss types) for float64-exact inputs."""
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    b = len(chosen_logps)
    lengths = np.concatenate([
        np.ones(b, int) if chosen_lengths is None else np.asarray(chosen_lengths, int),
        np.ones(b, int) if rejected_lengths is None else np.asarray(rejected_lengths, int),
    ])
    width = int(lengths.max()) + 1
    completion_mask = torch.zeros(2 * b, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        completion_mask[i, 1 : 1 + n] = 1  # the prompt token at position 0 is never scored
    per_token = torch.zeros(2 * b, width - 1, dtype=torch.float32)
    per_token[:, 0] = torch.tensor(np.concatenate([chosen_logps, rejected_logps]), dtype=torch.float32)

    trainer = DPOTrainer.__new__(DPOTrainer)
    stub = _StubModel(per_token)
    trainer.__dict__.update(
        model=stub,
        ref_model=None,
        accelerator=_Accelerator(),
        beta=beta,
        precompute_ref_logps=True,
        loss_types=loss_types,
        loss_weights=list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types),
        ld_alpha=None,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        label_smoothing=label_smoothing,
        use_weighting=False,
        aux_loss_enabled=False,
        args=types.SimpleNamespace(discopop_tau=discopop_tau),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * b, width, dtype=torch.long),
        "attention_mask": torch.ones(2 * b, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": torch.tensor(np.asarray(ref_chosen_logps), dtype=torch.float32),
        "ref_rejected_logps": torch.tensor(np.asarray(ref_rejected_logps), dtype=torch.float32),
    }
    with torch.no_grad():
        loss = DPOTrainer._compute_loss(trainer, stub, inputs, return_outputs=False)
    return float(loss)
