"""Pure preference losses: the DPO family, ROPO's robust loss, and reward-model losses.

This module imports only ``jax`` and ``jax.numpy`` so it can be used alone::

    from jaxpref.losses import dpo_loss, ropo_loss

Conventions (shared by every loss here):

* Inputs are per-sequence log-probabilities ``[B]`` -- the sum of the per-token log-probabilities of
  the response tokens (see :mod:`jaxpref.logprobs`) -- of the policy and of the frozen reference on the
  chosen (``y_w``) and rejected (``y_l``) responses.
* Outputs are **per-example** arrays ``[B]``, never a reduced scalar, so callers can weight, mask,
  accumulate micro-batches and reduce across hosts exactly. Reduce with :func:`weighted_mean`.
* The DPO-family losses return TRL's triple ``(losses, chosen_rewards, rejected_rewards)`` with the
  implicit rewards ``beta * (log pi(y|x) - log pi_ref(y|x))``.

Notation used in the docstrings::

    h_w = log pi(y_w|x) - log pi_ref(y_w|x)      (chosen log-ratio)
    h_l = log pi(y_l|x) - log pi_ref(y_l|x)      (rejected log-ratio)
    Delta = s(h_w) - s(h_l)                      (s = f-divergence score, identity for reverse KL)
    u = beta * Delta,   sigma = logistic function
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "DPO_LOSS_TYPES",
    "F_DIVERGENCE_TYPES",
    "dpo_loss",
    "ropo_loss",
    "ropo_gradient_weight",
    "bradley_terry_loss",
    "adversarial_rm_loss",
    "adversarial_rm_pair_losses",
    "adversarial_rm_pair_weights",
    "weighted_mean",
    "weighted_sum_and_weight",
]

#: Every ``loss_type`` accepted by :func:`dpo_loss` (TRL 1.16 ``DPOTrainer`` names).
DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)

#: f-divergence regularisers of f-DPO (Wang et al. 2023), TRL's ``f_divergence_type``.
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# The f-DPO reparameterisation leaves a beta*log Z(x) term that cancels only in the chosen-minus-rejected
# difference, so only losses built on that difference generalise to other f-divergences (as in TRL).
_F_DIVERGENCE_COMPATIBLE = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"})
_NEEDS_LENGTHS = frozenset({"ipo", "sigmoid_norm", "sft"})


def _f_divergence_score(log_ratio: Array, f_divergence_type: str, alpha_coef: float) -> Array:
    """The f-DPO score ``s(h) = f'(exp h)`` of a log-ratio ``h = log(pi/pi_ref)``.

    * ``reverse_kl``: ``f'(t) = log t``           -> ``s(h) = h`` (standard DPO)
    * ``forward_kl``: ``f'(t) = 1 - 1/t``         -> ``s(h) = 1 - exp(-h)``
    * ``js_divergence``: ``f'(t) = log(2t/(1+t))`` -> ``s(h) = log 2 + log sigma(h)``
    * ``alpha_divergence``: ``f'(t) = (t^(a-1) - 1)/(a-1)`` -> ``s(h) = (exp((a-1)h) - 1)/(a-1)``;
      the exponent is clamped at 80 (as in TRL) so ``exp`` stays finite in fp32; ``a -> 1`` is reverse KL.
    """
    if f_divergence_type == "reverse_kl":
        return log_ratio
    if f_divergence_type == "forward_kl":
        return 1.0 - jnp.exp(-log_ratio)
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(log_ratio)
    if f_divergence_type == "alpha_divergence":
        if abs(alpha_coef - 1.0) < 1e-6:
            return log_ratio
        t = jnp.minimum((alpha_coef - 1.0) * log_ratio.astype(jnp.float32), 80.0)
        return ((jnp.exp(t) - 1.0) / (alpha_coef - 1.0)).astype(log_ratio.dtype)
    raise ValueError(
        f"Unknown f_divergence_type {f_divergence_type!r}; valid types are {list(F_DIVERGENCE_TYPES)}."
    )


def _smoothed_logistic(u: Array, label_smoothing: float) -> Array:
    """``-(1 - eps) log sigma(u) - eps log sigma(-u)``: logistic loss with the label flipped w.p. ``eps``."""
    loss = -jax.nn.log_sigmoid(u)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * jax.nn.log_sigmoid(-u)
    return loss


def _lengths(lengths: Array | None, name: str, loss_type: str) -> Array:
    if lengths is None:
        raise ValueError(
            f"loss_type={loss_type!r} is length-normalised and needs `{name}` (number of response tokens per "
            "example, shape [B]); pass chosen_lengths= and rejected_lengths=."
        )
    return jnp.maximum(jnp.asarray(lengths, jnp.float32), 1.0)


def _single_dpo_loss(
    loss_type: str,
    *,
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    chosen_scores: Array,
    rejected_scores: Array,
    beta: float,
    label_smoothing: float,
    chosen_lengths: Array | None,
    rejected_lengths: Array | None,
    discopop_tau: float,
) -> Array:
    """Per-example loss ``[B]`` of one DPO-family loss type; see :func:`dpo_loss` for the formulas."""
    h_w = chosen_logps - ref_chosen_logps
    h_l = rejected_logps - ref_rejected_logps
    delta = chosen_scores - rejected_scores
    u = beta * delta

    if loss_type == "sigmoid":
        return _smoothed_logistic(u, label_smoothing)
    if loss_type == "hinge":
        return jax.nn.relu(1.0 - u)
    if loss_type in ("ipo", "sigmoid_norm"):
        lw = _lengths(chosen_lengths, "chosen_lengths", loss_type)
        ll = _lengths(rejected_lengths, "rejected_lengths", loss_type)
        normed_delta = chosen_scores / lw - rejected_scores / ll
        if loss_type == "ipo":
            return (normed_delta - 1.0 / (2.0 * beta)) ** 2
        return -jax.nn.log_sigmoid(beta * normed_delta)
    if loss_type == "exo_pair":
        if not 0.0 < label_smoothing < 1.0:
            raise ValueError(
                "loss_type='exo_pair' needs 0 < label_smoothing < 1 (the EXO paper recommends 1e-3); "
                f"got label_smoothing={label_smoothing}."
            )
        q_w, q_l = jax.nn.sigmoid(u), jax.nn.sigmoid(-u)
        log_q_w, log_q_l = jax.nn.log_sigmoid(u), jax.nn.log_sigmoid(-u)
        return q_w * (log_q_w - math.log1p(-label_smoothing)) + q_l * (log_q_l - math.log(label_smoothing))
    if loss_type == "nca_pair":
        r_w, r_l = beta * h_w, beta * h_l
        return -jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w) - 0.5 * jax.nn.log_sigmoid(-r_l)
    if loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"loss_type='robust' needs 0 <= label_smoothing < 0.5; got {label_smoothing}.")
        eps = label_smoothing
        return (-(1.0 - eps) * jax.nn.log_sigmoid(u) + eps * jax.nn.log_sigmoid(-u)) / (1.0 - 2.0 * eps)
    if loss_type == "bco_pair":
        return -jax.nn.log_sigmoid(beta * h_w) - jax.nn.log_sigmoid(-beta * h_l)
    if loss_type == "sppo_hard":
        return (h_w - 0.5 / beta) ** 2 + (h_l + 0.5 / beta) ** 2
    if loss_type == "aot":
        d = jnp.sort(chosen_logps - rejected_logps) - jnp.sort(ref_chosen_logps - ref_rejected_logps)
        return _smoothed_logistic(beta * d, label_smoothing)
    if loss_type == "aot_unpaired":
        d = jnp.sort(h_w) - jnp.sort(h_l)
        return _smoothed_logistic(beta * d, label_smoothing)
    if loss_type == "apo_zero":
        return (1.0 - jax.nn.sigmoid(beta * h_w)) + jax.nn.sigmoid(beta * h_l)
    if loss_type == "apo_down":
        return jax.nn.sigmoid(beta * h_w) + (1.0 - jax.nn.sigmoid(beta * (h_w - h_l)))
    if loss_type == "discopop":
        modulation = jax.nn.sigmoid(u / discopop_tau)
        # exp(-u) * sigmoid(u/tau) computed in log space: TRL's product is 0 * inf = nan once u < -88 in
        # fp32; this form equals it wherever that is finite and stays finite for tau < 1.
        exp_part = jnp.exp(jax.nn.log_sigmoid(u / discopop_tau) - u)
        return -jax.nn.log_sigmoid(u) * (1.0 - modulation) + exp_part
    if loss_type == "sft":
        lw = _lengths(chosen_lengths, "chosen_lengths", loss_type)
        return -chosen_logps / lw
    raise ValueError(f"Unknown loss_type {loss_type!r}; valid loss types are {list(DPO_LOSS_TYPES)}.")


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array | None = None,
    ref_rejected_logps: Array | None = None,
    *,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: Array | None = None,
    rejected_lengths: Array | None = None,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    discopop_tau: float = 0.05,
    reference_free: bool = False,
) -> tuple[Array, Array, Array]:
    r"""The DPO loss family, with TRL 1.16 ``DPOTrainer``'s loss types, names and formulas.

    Args:
      policy_chosen_logps, policy_rejected_logps: ``[B]`` summed response log-probs under the policy.
      ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the frozen reference. May be ``None``
        only with ``reference_free=True``.
      loss_type: one name from :data:`DPO_LOSS_TYPES`, or a list of names whose losses are summed with
        ``loss_weights`` (TRL's multi-loss, e.g. MPO = ``["sigmoid", "bco_pair", "sft"]``).
      loss_weights: one weight per loss type (default all 1.0).
      beta: inverse temperature of the implicit reward (IPO's tau is ``beta`` too).
      label_smoothing: probability ``eps`` that a label is flipped. Used by ``sigmoid`` (conservative
        DPO, cDPO), ``robust``, ``exo_pair``, ``aot`` and ``aot_unpaired``; ignored by the others.
      chosen_lengths, rejected_lengths: ``[B]`` numbers of response tokens, needed by ``ipo``,
        ``sigmoid_norm`` and ``sft`` (clamped to >= 1).
      f_divergence_type: one of :data:`F_DIVERGENCE_TYPES`; changes the score ``s`` below. Allowed with
        ``sigmoid``, ``sigmoid_norm``, ``hinge``, ``ipo``, ``exo_pair``, ``robust``, ``discopop``, ``sft``.
      f_alpha_divergence_coef: ``a`` of the alpha divergence.
      discopop_tau: temperature ``tau`` of DiscoPOP's modulation.
      reference_free: treat the reference log-probs as 0 (an implicit uniform reference).

    Returns:
      ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``; rewards are
      ``beta * (policy_logps - ref_logps)``. For ``aot``/``aot_unpaired`` the losses are of *sorted*
      margins (the batch is one optimal-transport problem), so loss ``i`` is not pair ``i``'s.

    Formulas (``h``, ``Delta``, ``u = beta * Delta`` as in the module docstring, ``eps`` = label_smoothing,
    ``n_w``, ``n_l`` the lengths):

    * ``sigmoid`` (DPO; cDPO when eps > 0): ``-(1-eps) log sigma(u) - eps log sigma(-u)``.
      TRL 1.16 ignores label smoothing for ``sigmoid``; TRL 0.x and the cDPO note apply it as here.
      With ``eps = 0`` (the default) the two are identical.
    * ``hinge`` (RSO/SLiC): ``max(0, 1 - u)``.
    * ``ipo``: ``(s(h_w)/n_w - s(h_l)/n_l - 1/(2 beta))^2`` -- length-normalised as in TRL, which says
      the IPO authors confirmed this form.
    * ``sigmoid_norm``: ``-log sigma(beta (s(h_w)/n_w - s(h_l)/n_l))``.
    * ``exo_pair`` (EXO, Eq. 16): ``KL(q || p)`` with ``q = (sigma(u), sigma(-u))``, ``p = (1-eps, eps)``.
    * ``nca_pair`` (NCA): ``-log sigma(beta h_w) - 1/2 log sigma(-beta h_w) - 1/2 log sigma(-beta h_l)``.
    * ``robust`` (rDPO, Chowdhury et al. 2024): ``((1-eps)(-log sigma(u)) - eps(-log sigma(-u))) / (1-2 eps)``,
      an unbiased estimate of the clean loss under flip rate eps.
    * ``bco_pair`` (BCO): ``-log sigma(beta h_w) - log sigma(-beta h_l)``.
    * ``sppo_hard`` (SPPO, hard labels): ``(h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2``.
    * ``aot`` (AOT paired): smoothed logistic of ``beta (sort(logp_w - logp_l) - sort(ref_w - ref_l))``.
    * ``aot_unpaired``: smoothed logistic of ``beta (sort(h_w) - sort(h_l))``.
    * ``apo_zero`` (*Anchored* Preference Optimization, D'Oosterlinck et al. 2024, Eq. 7 -- **not**
      adversarial preference optimization, see ``jaxpref.algorithms.apo``):
      ``1 - sigma(beta h_w) + sigma(beta h_l)``; raises chosen and lowers rejected likelihood.
    * ``apo_down`` (*Anchored* PO, Eq. 8): ``sigma(beta h_w) + 1 - sigma(beta (h_w - h_l))``; lowers both,
      the rejected more.
    * ``discopop`` (DiscoPOP, Eq. 5): ``-log sigma(u) (1 - m) + exp(-u) m`` with ``m = sigma(u / tau)``.
    * ``sft``: ``-logp_w / n_w`` (per-example mean token NLL of the chosen response; TRL averages over
      all chosen tokens of the batch instead, which is equal when lengths are equal).

    The f-divergence score ``s`` is the identity for reverse KL; see ``_f_divergence_score``.
    """
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not loss_types:
        raise ValueError(f"loss_type is empty; give one or more of {list(DPO_LOSS_TYPES)}.")
    unknown = [t for t in loss_types if t not in DPO_LOSS_TYPES]
    if unknown:
        raise ValueError(f"Unknown loss_type {unknown[0]!r}; valid loss types are {list(DPO_LOSS_TYPES)}.")
    weights = [1.0] * len(loss_types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(loss_types):
        raise ValueError(
            f"loss_weights has {len(weights)} entries but loss_type has {len(loss_types)}; give one weight per type."
        )
    if f_divergence_type not in F_DIVERGENCE_TYPES:
        raise ValueError(
            f"Unknown f_divergence_type {f_divergence_type!r}; valid types are {list(F_DIVERGENCE_TYPES)}."
        )
    if f_divergence_type != "reverse_kl" and not set(loss_types) <= _F_DIVERGENCE_COMPATIBLE:
        raise ValueError(
            f"f_divergence_type={f_divergence_type!r} works only with loss types {sorted(_F_DIVERGENCE_COMPATIBLE)}; "
            f"got {loss_types}. Use f_divergence_type='reverse_kl' with these losses."
        )

    chosen = jnp.asarray(policy_chosen_logps)
    rejected = jnp.asarray(policy_rejected_logps)
    if reference_free:
        ref_chosen = jnp.zeros_like(chosen)
        ref_rejected = jnp.zeros_like(rejected)
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("ref_chosen_logps and ref_rejected_logps are required unless reference_free=True.")
        ref_chosen = jnp.asarray(ref_chosen_logps)
        ref_rejected = jnp.asarray(ref_rejected_logps)

    h_w = chosen - ref_chosen
    h_l = rejected - ref_rejected
    chosen_scores = _f_divergence_score(h_w, f_divergence_type, f_alpha_divergence_coef)
    rejected_scores = _f_divergence_score(h_l, f_divergence_type, f_alpha_divergence_coef)

    losses = jnp.zeros(jnp.broadcast_shapes(chosen.shape, rejected.shape), dtype=jnp.result_type(chosen, jnp.float32))
    for name, weight in zip(loss_types, weights):
        losses = losses + weight * _single_dpo_loss(
            name,
            chosen_logps=chosen,
            rejected_logps=rejected,
            ref_chosen_logps=ref_chosen,
            ref_rejected_logps=ref_rejected,
            chosen_scores=chosen_scores,
            rejected_scores=rejected_scores,
            beta=beta,
            label_smoothing=label_smoothing,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            discopop_tau=discopop_tau,
        )
    return losses, beta * jax.lax.stop_gradient(h_w), beta * jax.lax.stop_gradient(h_l)


def ropo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array | None = None,
    ref_rejected_logps: Array | None = None,
    *,
    alpha: float = 14.0,
    beta: float = 0.1,
    reference_free: bool = False,
) -> tuple[Array, Array, Array]:
    r"""ROPO's noise-tolerant loss (Liang et al., "ROPO: Robust Preference Optimization for LLMs", ICML 2025).

    With ``u = beta * (h_w - h_l)`` and the normaliser ``c = 4 alpha / (1 + alpha)^2``::

        l_ropo(u) = c * [ -log sigma(u) + alpha * sigma(-u) ]
                  = c * [ l_dpo(u)       + alpha * l_na(u)  ]

    ``l_na(u) = sigma(-u) = 1 - sigma(u)`` is the symmetric ("noise-aware") sigmoid loss:
    ``l_na(u) + l_na(-u) = 1``, so under symmetric label flips at rate ``eta < 1/2`` its expected value is
    ``(1 - 2 eta) * clean + eta`` -- same minimiser as on clean data.

    Gradient: ``d l / d Delta = -beta * w(u)`` with the per-pair gradient weight
    (see :func:`ropo_gradient_weight`)::

        w_ropo(u) = c * sigma(-u) * (1 + alpha * sigma(u))        vs.   w_dpo(u) = sigma(-u)

    DPO's weight tends to 1 as ``u -> -inf``: it pushes hardest on the pairs the model confidently
    contradicts -- exactly the flipped labels. ROPO's weight, written with ``s = sigma(-u)``, is
    ``c ((1+alpha) s - alpha s^2)``; its maximum over ``u`` is exactly 1 (that is what ``c`` is for, when
    ``alpha >= 1``), reached at ``s = (1+alpha)/(2 alpha)``, and it falls to ``c`` as ``u -> -inf``
    (alpha=6: 0.49, 14: 0.249, 30: 0.125) and to 0 as ``u -> +inf``. Confidently contradicted pairs are
    thus down-weighted relative to uncertain ones, and keep a high loss, which is what lets ROPO's
    filtering step find them.

    The defaults ``alpha = 14`` (ablation {6, 14, 30}; larger for more noise) and ``beta = 0.1`` come
    from independent re-implementations; the normaliser from a reviewer's quote of the paper.
    ``alpha = 0`` is plain DPO (``c`` is then taken as 1).

    Returns:
      ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``, as :func:`dpo_loss`.
    """
    if alpha < 0:
        raise ValueError(f"ropo_loss needs alpha >= 0; got alpha={alpha}.")
    chosen = jnp.asarray(policy_chosen_logps)
    rejected = jnp.asarray(policy_rejected_logps)
    if reference_free:
        h_w, h_l = chosen, rejected
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("ref_chosen_logps and ref_rejected_logps are required unless reference_free=True.")
        h_w = chosen - jnp.asarray(ref_chosen_logps)
        h_l = rejected - jnp.asarray(ref_rejected_logps)
    u = beta * (h_w - h_l)
    c = 4.0 * alpha / (1.0 + alpha) ** 2 if alpha > 0 else 1.0
    losses = c * (-jax.nn.log_sigmoid(u) + alpha * jax.nn.sigmoid(-u))
    return losses, beta * jax.lax.stop_gradient(h_w), beta * jax.lax.stop_gradient(h_l)


def ropo_gradient_weight(u: Array, alpha: float) -> Array:
    r"""ROPO's gradient weight ``w(u) = 4 alpha/(1+alpha)^2 * sigma(-u) * (1 + alpha sigma(u))``.

    ``d l_ropo / d Delta = -beta * w(u)``; for DPO the weight is ``sigma(-u)``. Useful for plots and tests.
    """
    c = 4.0 * alpha / (1.0 + alpha) ** 2 if alpha > 0 else 1.0
    return c * jax.nn.sigmoid(-u) * (1.0 + alpha * jax.nn.sigmoid(u))


def bradley_terry_loss(
    chosen_scores: Array,
    rejected_scores: Array,
    *,
    margin: Array | float | None = None,
    label_smoothing: float = 0.0,
) -> Array:
    r"""Bradley-Terry ranking loss of a reward model, per example ``[B]``.

    With ``d = r(x, y_w) - r(x, y_l) - m`` (``m`` the optional margin, per example or scalar)::

        loss = -(1 - eps) log sigma(d) - eps log sigma(-d)

    ``eps = 0`` with a margin is TRL ``RewardTrainer``'s loss (Llama-2's margin loss); ``eps > 0`` treats
    each label as flipped with probability ``eps``.
    """
    d = jnp.asarray(chosen_scores) - jnp.asarray(rejected_scores)
    if margin is not None:
        d = d - jnp.asarray(margin)
    return _smoothed_logistic(d, label_smoothing)


ADVERSARIAL_RM_FORMS = ("ranking", "diff")


def adversarial_rm_pair_losses(chosen_scores: Array, rejected_scores: Array, adversarial: Array, *,
                       form: str = "ranking", margin: Array | float | None = None,
                       label_smoothing: float = 0.0) -> Array:
    r"""Per-pair terms of the reward-model loss of APO -- *adversarial* preference optimization (Cheng et al.
    2023), not TRL's anchored ``apo_zero``/``apo_down`` -- ``[N]``.

    With ``d = r(x, y_chosen) - r(x, y_rejected)``: a human pair (``adversarial`` false) costs the Bradley-Terry
    term of :func:`bradley_terry_loss` (``margin``, ``label_smoothing``); an adversarial pair -- chosen = the
    golden answer, rejected = a policy sample -- costs ``-log sigma(d)`` (``form="ranking"``) or the raw gap
    ``-d`` (``form="diff"``, the paper's WGAN-style ablation).
    """
    if form not in ADVERSARIAL_RM_FORMS:
        raise ValueError(f"form must be one of {ADVERSARIAL_RM_FORMS}, got {form!r}.")
    d = jnp.asarray(chosen_scores) - jnp.asarray(rejected_scores)
    human = bradley_terry_loss(chosen_scores, rejected_scores, margin=margin, label_smoothing=label_smoothing)
    adv = -jax.nn.log_sigmoid(d) if form == "ranking" else -d
    return jnp.where(jnp.asarray(adversarial, bool), adv, human)


def adversarial_rm_pair_weights(adversarial: Array, *, rank_weight: float = 1.0, apo_weight: float = 0.1,
                        samples_per_prompt: int = 4, mask: Array | None = None) -> Array:
    r"""Per-pair weights ``w`` such that ``sum_i w_i * adversarial_rm_pair_losses_i`` is the APO RM objective over a
    set of ``N_h`` human pairs and ``P`` prompts x ``K = samples_per_prompt`` adversarial pairs::

        L_RM = rank_weight * (1/N_h) sum_h l_h + (apo_weight / K) * (1/P) sum_p sum_k l_pk

    i.e. ``w = rank_weight / N_h`` on human pairs and ``apo_weight / (K P) = apo_weight / N_a`` on adversarial
    ones (``mask`` 0 = padding, weight 0). ``apo_weight = 0`` is the base RM (human pairs only).
    """
    adversarial = jnp.asarray(adversarial, bool)
    mask = jnp.ones(adversarial.shape, bool) if mask is None else jnp.asarray(mask, bool)
    n_adv = jnp.sum(adversarial & mask)
    n_human = jnp.sum(~adversarial & mask)
    del samples_per_prompt  # enters only through P = N_a / K, which cancels: apo_weight / K / P = apo_weight / N_a
    w_adv = jnp.where(n_adv > 0, apo_weight / jnp.maximum(n_adv, 1), 0.0)
    w_human = jnp.where(n_human > 0, rank_weight / jnp.maximum(n_human, 1), 0.0)
    return jnp.where(mask, jnp.where(adversarial, w_adv, w_human), 0.0)


def adversarial_rm_loss(chosen_scores: Array, rejected_scores: Array, adversarial: Array, *, rank_weight: float = 1.0,
                apo_weight: float = 0.1, samples_per_prompt: int = 4, form: str = "ranking",
                mask: Array | None = None, margin: Array | float | None = None,
                label_smoothing: float = 0.0) -> Array:
    r"""The APO reward-model loss (scalar) over one set of scored pairs (see :func:`adversarial_rm_pair_weights`)::

        L_RM = c_rank * mean_{human} -log sigma(r(y+) - r(y-))
             + (c_apo / K) * (1/P) sum_p sum_{k<K} l(r(y_gold,p) - r(y_pk)),   l = -log sigma(.) or -(.)

    Defaults ``c_rank = 1``, ``c_apo = 0.1``, ``K = 4`` (the APO README). ``adversarial[i]`` marks the
    (golden, sample) pairs, whose chosen score is the golden answer's.
    """
    losses = adversarial_rm_pair_losses(chosen_scores, rejected_scores, adversarial, form=form, margin=margin,
                                label_smoothing=label_smoothing)
    weights = adversarial_rm_pair_weights(adversarial, rank_weight=rank_weight, apo_weight=apo_weight,
                                  samples_per_prompt=samples_per_prompt, mask=mask)
    return jnp.sum(losses * weights)


def weighted_sum_and_weight(values: Array, weights: Array | None = None) -> tuple[Array, Array]:
    """``(sum_i w_i * v_i, sum_i w_i)`` -- the two halves of a weighted mean, for exact accumulation.

    Sum these over micro-batches and hosts, then divide once: the result equals the weighted mean
    of the whole batch, which averaging per-micro-batch means would not.
    """
    values = jnp.asarray(values)
    if weights is None:
        weights = jnp.ones_like(values)
    weights = jnp.asarray(weights, values.dtype)
    return jnp.sum(values * weights), jnp.sum(weights)


def weighted_mean(values: Array, weights: Array | None = None) -> Array:
    """``sum_i w_i v_i / sum_i w_i`` (0 when every weight is 0). ROPO's per-pair weights enter here."""
    total, weight = weighted_sum_and_weight(values, weights)
    return jnp.where(weight > 0, total / jnp.where(weight > 0, weight, 1.0), 0.0)
