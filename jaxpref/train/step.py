"""Jit-compiled training and evaluation steps for pairwise preference losses, with exact gradient accumulation.

A step is built from a *pair loss*: a pure function
``(policy_chosen, policy_rejected, ref_chosen, ref_rejected, batch) -> (losses [P], chosen_rewards [P],
rejected_rewards [P])`` such as :func:`jaxpref.losses.dpo_loss` with its options bound. Per-pair weights
(``batch["pair_weight"]``: 0 for padding pairs, ROPO's weights otherwise) enter through one explicit
reduction::

    loss = sum_i w_i * loss_i / sum_i w_i

Accumulation is exact: each micro-batch adds ``grad(sum_i w_i loss_i)`` and ``sum_i w_i`` to an
accumulator, and the update divides once, so M micro-batches of P pairs give the same update as one
batch of M*P pairs. (Batch-coupled losses -- ``aot``, ``aot_unpaired`` -- are the exception.)

Log-probs: the LM head runs only at ``batch["score_index"]`` positions (the response tokens), through
:func:`jaxpref.logprobs.token_logprobs_from_hidden`, which never materialises ``[B, T, V]`` logits.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxpref import sharding as S
from jaxpref.data.batching import sequence_sums
from jaxpref.logprobs import token_logprobs_from_hidden
from jaxpref.losses import weighted_sum_and_weight
from jaxpref.models.llama import LlamaForCausalLM, lm_head_kernel

PairLoss = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]

METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


def sequence_logps(params, model: LlamaForCausalLM, batch: dict, *, vocab_chunk: int = 8192):
    """Summed response log-probs ``(chosen [P], rejected [P])`` of a batch (see :mod:`jaxpref.data.batching`)."""
    hidden = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
                         positions=batch["positions"], segment_ids=batch["segment_ids"], return_hidden=True)
    index = batch["score_index"]
    h = jnp.take_along_axis(hidden[:, :-1], index[..., None], axis=1)  # [R, W, D]
    labels = jnp.take_along_axis(batch["input_ids"][:, 1:], index, axis=1)
    seq = jnp.take_along_axis(batch["sequence_ids"][:, 1:], index, axis=1)
    # Gather the LM head once per step (as FSDP gathers every weight) rather than slicing a vocab-sharded kernel
    # inside the chunk loop, which makes XLA put collectives in the loop body.
    kernel = nn.with_logical_constraint(lm_head_kernel(params, model.config).astype(h.dtype), (None, None))
    per_token = token_logprobs_from_hidden(h, kernel, labels, chunk_size=vocab_chunk)
    return sequence_sums(per_token, batch["score_mask"], seq, batch["pair_weight"].shape[0])


def _loss_terms(params, ref_params, batch, *, model, pair_loss: PairLoss, reference: str, vocab_chunk: int,
                scorer: Callable = sequence_logps):
    """Weighted loss sum (the differentiated quantity), the weight sum, and weighted metric sums."""
    chosen, rejected = scorer(params, model, batch, vocab_chunk=vocab_chunk)
    if reference == "frozen":
        ref_chosen, ref_rejected = jax.lax.stop_gradient(scorer(ref_params, model, batch, vocab_chunk=vocab_chunk))
    elif reference == "cached":
        ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    else:  # "none": reference-free losses
        ref_chosen = ref_rejected = jnp.zeros_like(chosen)
    losses, chosen_rewards, rejected_rewards = pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch)
    weight = batch["pair_weight"]
    total, weight_sum = weighted_sum_and_weight(losses, weight)
    per_pair = {
        "loss": losses,
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(jnp.float32),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen,
        "logps/rejected": rejected,
    }
    sums = {k: jnp.sum(jax.lax.stop_gradient(v) * weight) for k, v in per_pair.items()}
    outputs = {"policy_chosen": chosen, "policy_rejected": rejected, "ref_chosen": ref_chosen,
               "ref_rejected": ref_rejected, "losses": losses}
    return total, (weight_sum, sums, jax.lax.stop_gradient(outputs))


def zero_accumulator(params) -> dict:
    return {"grads": jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            "weight": jnp.zeros((), jnp.float32),
            "metrics": {k: jnp.zeros((), jnp.float32) for k in METRIC_KEYS}}


class StepFns:
    """The jitted functions of one training setup: ``accumulate``, ``apply``, ``evaluate``, ``zero``.

    * ``accumulate(params, ref_params, acc, batch) -> acc``: adds one micro-batch (acc donated).
    * ``apply(state, acc) -> (state, metrics)``: one optimizer update from the accumulated sums (state
      donated); metrics are weighted means plus ``grad_norm`` and ``learning_rate``.
    * ``evaluate(params, ref_params, batch) -> (metric sums, weight, per-pair outputs)``: no gradients.
    * ``zero(params) -> acc``: a fresh accumulator with the grads sharded like the params.

    ``scorer(params, model, batch, vocab_chunk=) -> (chosen [P], rejected [P])`` gives the per-sequence
    quantities the pair loss compares: summed response log-probs (:func:`sequence_logps`, the default, None) or a
    reward model's scores (:func:`jaxpref.models.reward.sequence_rewards`).
    """

    def __init__(self, model: LlamaForCausalLM, tx: optax.GradientTransformation, schedule, pair_loss: PairLoss, *,
                 mesh, state_shardings, reference: str = "frozen", vocab_chunk: int = 8192,
                 scorer: Callable | None = None):
        if reference not in ("frozen", "cached", "none"):
            raise ValueError(f"reference must be 'frozen', 'cached' or 'none', got {reference!r}.")
        self.mesh = mesh
        terms = functools.partial(_loss_terms, model=model, pair_loss=pair_loss, reference=reference,
                                  vocab_chunk=vocab_chunk, scorer=scorer or sequence_logps)
        param_sh = state_shardings.params
        scalar = S.replicated(mesh)
        acc_sh = {"grads": param_sh, "weight": scalar, "metrics": {k: scalar for k in METRIC_KEYS}}
        self.acc_shardings = acc_sh

        def accumulate(params, ref_params, acc, batch):
            grads, (weight, sums, _) = jax.grad(terms, has_aux=True)(params, ref_params, batch)
            return {"grads": jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), acc["grads"], grads),
                    "weight": acc["weight"] + weight,
                    "metrics": {k: acc["metrics"][k] + sums[k] for k in METRIC_KEYS}}

        def apply(state, acc):
            denom = jnp.maximum(acc["weight"], 1e-12)
            grads = jax.tree_util.tree_map(lambda g, p: (g / denom).astype(p.dtype), acc["grads"], state.params)
            metrics = {k: v / denom for k, v in acc["metrics"].items()}
            metrics["grad_norm"] = optax.tree.norm(grads)
            metrics["learning_rate"] = schedule(state.step)
            metrics["pairs"] = acc["weight"]
            return state.apply_gradients(grads, tx), metrics

        def evaluate(params, ref_params, batch):
            _, (weight, sums, outputs) = terms(params, ref_params, batch)
            return sums, weight, outputs

        # A one-entry PartitionSpec shards only the leading (row / pair) axis, so it is a valid prefix for
        # every batch field whatever its rank; the reference params are an empty pytree unless frozen.
        batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        ref_sh = param_sh if reference == "frozen" else None
        self._accumulate = jax.jit(accumulate, in_shardings=(param_sh, ref_sh, acc_sh, batch_sh), out_shardings=acc_sh,
                                   donate_argnums=(2,))
        self._apply = jax.jit(apply, in_shardings=(state_shardings, acc_sh), out_shardings=(state_shardings, scalar),
                              donate_argnums=(0,))
        self._evaluate = jax.jit(evaluate, in_shardings=(param_sh, ref_sh, batch_sh))
        self._zero = jax.jit(zero_accumulator, in_shardings=(param_sh,), out_shardings=acc_sh)

    def accumulate(self, params, ref_params, acc, batch):
        with S.activation_rules(self.mesh):
            return self._accumulate(params, ref_params, acc, batch)

    def apply(self, state, acc):
        with S.activation_rules(self.mesh):
            return self._apply(state, acc)

    def evaluate(self, params, ref_params, batch):
        with S.activation_rules(self.mesh):
            return self._evaluate(params, ref_params, batch)

    def zero(self, params):
        return self._zero(params)


def device_batch(local: dict, mesh) -> dict:
    """Host-local numpy batch -> global jax arrays, leading axis sharded over ``data`` x ``fsdp``.

    Every host passes its own slice (see :class:`jaxpref.data.PairBatcher`); the global leading size is the
    local one times the host count.
    """
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for k, v in local.items():
        global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
        if global_shape[0] % n_batch_shards:
            raise ValueError(
                f"batch field {k!r} has {global_shape[0]} rows, not divisible by mesh data x fsdp = {n_batch_shards}; "
                "choose pairs_per_batch (and rows_per_batch) as multiples of data x fsdp."
            )
        out[k] = jax.make_array_from_process_local_data(S.batch_sharding(mesh, v.ndim), v, global_shape)
    return out


def dpo_pair_loss(loss_cfg) -> PairLoss:
    """``config.loss`` -> a pair loss over :func:`jaxpref.losses.dpo_loss` (every TRL loss type)."""
    from jaxpref.losses import dpo_loss

    kwargs: dict[str, Any] = dict(
        loss_type=list(loss_cfg.type) if isinstance(loss_cfg.type, (list, tuple)) else loss_cfg.type,
        beta=loss_cfg.beta,
        label_smoothing=loss_cfg.get("label_smoothing", 0.0),
        f_divergence_type=loss_cfg.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=loss_cfg.get("f_alpha_divergence_coef", 1.0),
        discopop_tau=loss_cfg.get("discopop_tau", 0.05),
    )
    if loss_cfg.get("loss_weights"):
        kwargs["loss_weights"] = list(loss_cfg.loss_weights)

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_lengths=batch["chosen_lengths"],
                        rejected_lengths=batch["rejected_lengths"], **kwargs)

    return pair_loss
