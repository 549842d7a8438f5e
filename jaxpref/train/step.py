"""Jit-compiled training and evaluation steps for pairwise preference losses, with exact gradient accumulation.

A step is built from a *pair loss*: a pure function
``(policy_chosen, policy_rejected, ref_chosen, ref_rejected, batch) -> (losses [P], chosen_rewards [P],
rejected_rewards [P])`` such as :func:`jaxpref.losses.dpo_loss` with its options bound. Per-pair weights
(:attr:`Batch.weight`: 0 for padding pairs, ROPO's and APO's weights otherwise) enter through one explicit
reduction::

    loss = sum_i w_i * loss_i / sum_i w_i

Accumulation is exact: each micro-batch adds ``grad(sum_i w_i loss_i)`` and ``sum_i w_i`` to an
accumulator, and the update divides once, so M micro-batches of P pairs give the same update as one
batch of M*P pairs. (Batch-coupled losses -- ``aot``, ``aot_unpaired`` -- are the exception.)

Log-probs: the LM head runs only at :attr:`Batch.score_index` positions (the response tokens), through
:func:`jaxpref.logprobs.token_logprobs_from_hidden`, which never materialises ``[B, T, V]`` logits.

LoRA: with ``lora`` settings the steps' params are the trainable tree ``{"lora": adapters, **heads}`` (see
:mod:`jaxpref.train.runtime`) and their second argument is the frozen weights (never donated, never
differentiated). The policy pass is the model with the adapters added (:func:`jaxpref.models.lora.apply_lora`);
the ``"frozen"`` reference pass is the *same* weights with the adapters off -- LoRA's reference costs no second
copy of the model. Gradients and optimizer moments exist for the trainable tree only.

Everything here takes arrays and static settings and has no side effects, so :class:`StepFns` can be
lowered with abstract inputs (:meth:`StepFns.lower`) and compiled for a machine that is not here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpref import sharding as S
from jaxpref.logprobs import sequence_sums, token_logprobs_from_hidden
from jaxpref.losses import weighted_sum_and_weight
from jaxpref.models.llama import LlamaForCausalLM, lm_head_kernel
from jaxpref.models.lora import LoraSettings, apply_lora

PairLoss = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]

METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")
REFERENCE_MODES = ("frozen", "cached", "none")


@flax.struct.dataclass
class Batch:
    """A global batch of ``P`` preference pairs in ``R`` rows of ``L`` tokens (layout of
    :mod:`jaxpref.data.batching`; the leading axis of every field is sharded over ``data`` x ``fsdp``).

    Token fields ``[R, L]`` int32: ``input_ids``, ``attention_mask``, ``positions``, ``segment_ids`` (packing),
    ``loss_mask`` (response tokens), ``sequence_ids`` (``2i`` chosen / ``2i+1`` rejected of pair ``i``, ``2P``
    padding). ``score_index``/``score_mask`` ``[G, W]``: the next-token positions whose targets are response
    tokens, as flat indices into each group of ``R / G`` rows (``G`` = the batch's device shards, or ``R``
    when packing). Pair fields ``[P]``:

    * ``weight`` float32 -- the pair's weight in ``sum w l / sum w`` (0 = padding pair; ROPO's w-step
      weights; APO's per-group RM weights);
    * ``group`` int32 -- which term of a multi-term loss the pair belongs to (APO's RM: 0 human pair,
      1 adversarial golden-vs-sample pair; 0 everywhere else);
    * ``index`` int32 -- the pair's position in the batcher's pair list (-1 = padding);
    * ``chosen_lengths``/``rejected_lengths`` float32 -- response tokens (length-normalised losses);
    * ``ref_chosen``/``ref_rejected`` float32 -- cached reference log-probs (zeros unless the reference is
      ``"cached"``).
    """

    input_ids: jax.Array
    attention_mask: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    loss_mask: jax.Array
    sequence_ids: jax.Array
    score_index: jax.Array
    score_mask: jax.Array
    weight: jax.Array
    group: jax.Array
    index: jax.Array
    chosen_lengths: jax.Array
    rejected_lengths: jax.Array
    ref_chosen: jax.Array
    ref_rejected: jax.Array

    @property
    def num_pairs(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_host(cls, local: dict[str, np.ndarray], ref_chosen=None, ref_rejected=None) -> "Batch":
        """A host-local numpy batch (:meth:`jaxpref.data.PairBatcher.make_batch`) as a :class:`Batch` of numpy
        arrays, with cached reference log-probs where given (zeros otherwise)."""
        zeros = np.zeros_like(local["pair_weight"], np.float32)
        return cls(
            input_ids=local["input_ids"], attention_mask=local["attention_mask"], positions=local["positions"],
            segment_ids=local["segment_ids"], loss_mask=local["loss_mask"], sequence_ids=local["sequence_ids"],
            score_index=local["score_index"], score_mask=local["score_mask"], weight=local["pair_weight"],
            group=local["pair_group"], index=local["pair_index"], chosen_lengths=local["chosen_lengths"],
            rejected_lengths=local["rejected_lengths"],
            ref_chosen=zeros if ref_chosen is None else np.asarray(ref_chosen, np.float32),
            ref_rejected=zeros if ref_rejected is None else np.asarray(ref_rejected, np.float32))

    @classmethod
    def abstract(cls, num_pairs: int, rows: int, length: int, score_width: int, sharding=None,
                 score_groups: int | None = None) -> "Batch":
        """``jax.ShapeDtypeStruct`` fields of a global batch, for lowering a step without data."""
        def spec(shape, dtype):
            sh = None if sharding is None else sharding(len(shape))
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

        tok = lambda: spec((rows, length), jnp.int32)  # noqa: E731
        pair = lambda dtype: spec((num_pairs,), dtype)  # noqa: E731
        return cls(input_ids=tok(), attention_mask=tok(), positions=tok(), segment_ids=tok(), loss_mask=tok(),
                   sequence_ids=tok(), score_index=spec((score_groups or rows, score_width), jnp.int32),
                   score_mask=spec((score_groups or rows, score_width), jnp.int32), weight=pair(jnp.float32), group=pair(jnp.int32),
                   index=pair(jnp.int32), chosen_lengths=pair(jnp.float32), rejected_lengths=pair(jnp.float32),
                   ref_chosen=pair(jnp.float32), ref_rejected=pair(jnp.float32))


def pair_logprobs(params, model: LlamaForCausalLM, batch: Batch, *, vocab_chunk: int = 8192):
    """Summed response log-probs ``(chosen [P], rejected [P])`` of a batch under ``params``."""
    hidden = model.apply({"params": params}, batch.input_ids, attention_mask=batch.attention_mask,
                         positions=batch.positions, segment_ids=batch.segment_ids, return_hidden=True)
    index = batch.score_index  # [G, W] flat positions within each group of R / G rows (see Batch)
    groups = index.shape[0]

    def grouped(x):  # [R, L - 1, ...] -> [G, (R / G) * (L - 1), ...]: a group's rows end to end
        return x.reshape(groups, -1, *x.shape[2:])

    h = jnp.take_along_axis(grouped(hidden[:, :-1]), index[..., None], axis=1)  # [G, W, D]
    labels = jnp.take_along_axis(grouped(batch.input_ids[:, 1:]), index, axis=1)
    seq = jnp.take_along_axis(grouped(batch.sequence_ids[:, 1:]), index, axis=1)
    # Gather the LM head once per step (as FSDP gathers every weight) rather than slicing a vocab-sharded kernel
    # inside the chunk loop, which makes XLA put collectives in the loop body.
    kernel = nn.with_logical_constraint(lm_head_kernel(params, model.config).astype(h.dtype), (None, None))
    per_token = token_logprobs_from_hidden(h, kernel, labels, chunk_size=vocab_chunk)
    return sequence_sums(per_token, batch.score_mask, seq, batch.num_pairs)


class AdaptedModel:
    """``model`` with LoRA adapters attached: ``apply({"params": weights}, ...)`` is
    :func:`~jaxpref.models.lora.apply_lora` of ``adapters`` (dropout when ``dropout_rng`` is given), ``config`` the
    model's. Scorers (:func:`pair_logprobs`, :func:`jaxpref.models.reward.sequence_rewards`) take it in place of
    the model, so they know nothing of LoRA."""

    def __init__(self, model, adapters, settings: LoraSettings, dropout_rng=None):
        self.model, self.adapters, self.settings, self.dropout_rng = model, adapters, settings, dropout_rng

    @property
    def config(self):
        return self.model.config

    def apply(self, variables, *args, **kwargs):
        return apply_lora(self.model, variables["params"], self.adapters, *args, settings=self.settings,
                          dropout_rng=self.dropout_rng, **kwargs)


def split_trainable(params, frozen, model, lora: LoraSettings | None, dropout_rng=None):
    """``(weights, policy model)`` the scorer takes: without LoRA ``(params, model)``; with LoRA the frozen weights
    with the trainable heads in place and the model with ``params["lora"]`` attached."""
    if lora is None:
        return params, model
    weights = {**frozen, **{k: v for k, v in params.items() if k != "lora"}}
    return weights, AdaptedModel(model, params["lora"], lora, dropout_rng)


def _loss_terms(params, ref_params, batch: Batch, *, model, pair_loss: PairLoss, reference: str, vocab_chunk: int,
                scorer: Callable = pair_logprobs, lora: LoraSettings | None = None, dropout_rng=None):
    """Weighted loss sum (the differentiated quantity), the weight sum, and weighted metric sums.

    ``ref_params``: the frozen reference (full fine-tuning, ``"frozen"``), the frozen weights (LoRA; the
    reference is them with the adapters off) or None."""
    weights, policy = split_trainable(params, ref_params, model, lora, dropout_rng)
    chosen, rejected = scorer(weights, policy, batch, vocab_chunk=vocab_chunk)
    if reference == "frozen":
        ref_weights = ref_params if lora is None else weights
        ref_chosen, ref_rejected = jax.lax.stop_gradient(scorer(ref_weights, model, batch, vocab_chunk=vocab_chunk))
    elif reference == "cached":
        ref_chosen, ref_rejected = batch.ref_chosen, batch.ref_rejected
    else:  # "none": reference-free losses and reward models
        ref_chosen = ref_rejected = jnp.zeros_like(chosen)
    losses, chosen_rewards, rejected_rewards = pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch)
    weight = batch.weight
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


def zero_accumulator(params, rng=None) -> dict:
    """A fresh accumulator: float32 zero grads like ``params``, weight and metric sums; ``rng`` (LoRA dropout) is
    carried and split once per micro-batch."""
    acc = {"grads": jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
           "weight": jnp.zeros((), jnp.float32),
           "metrics": {k: jnp.zeros((), jnp.float32) for k in METRIC_KEYS}}
    if rng is not None:
        acc["rng"] = rng
    return acc


class StepFns:
    """The jitted functions of one training setup: ``accumulate``, ``apply``, ``evaluate``, ``score``, ``zero``.

    * ``accumulate(params, ref_params, acc, batch) -> acc``: adds one micro-batch (acc donated).
    * ``apply(state, acc) -> (state, metrics)``: one optimizer update from the accumulated sums (state
      donated); metrics are weighted means plus ``grad_norm``, ``learning_rate`` and ``pairs``.
    * ``evaluate(params, ref_params, batch) -> (metric sums, weight, per-pair outputs)``: no gradients.
    * ``score(weights, batch) -> (chosen [P], rejected [P])``: the scorer of the plain model (no adapters) on
      full or frozen weights -- reference log-probs (cached table, :meth:`Trainer.reference_logps`).
    * ``zero(params, rng=None) -> acc``: a fresh accumulator with the grads sharded like the params (``rng``:
      the step's LoRA-dropout key, needed when ``lora.dropout > 0``).

    ``params`` are the train state's params; ``ref_params`` is the frozen reference copy (full fine-tuning with
    ``reference="frozen"``), the frozen weights (``lora`` set: the reference is them with adapters off), or
    None. ``scorer(params, model, batch, vocab_chunk=) -> (chosen [P], rejected [P])`` gives the per-sequence
    quantities the pair loss compares: summed response log-probs (:func:`pair_logprobs`, the default) or a
    reward model's scores (:func:`jaxpref.models.reward.sequence_rewards`). ``reference``: ``"frozen"``
    (a reference forward pass every step), ``"cached"`` (log-probs read from the batch) or ``"none"``.
    ``lora``: :class:`~jaxpref.models.lora.LoraSettings` (None = full fine-tuning); ``frozen_params``: then the
    frozen weights as ``jax.ShapeDtypeStruct``s with shardings (they place the frozen argument and
    :meth:`lower` uses them).
    """

    def __init__(self, model, tx: optax.GradientTransformation, schedule, pair_loss: PairLoss, *,
                 mesh, state_shardings, reference: str = "frozen", vocab_chunk: int = 8192,
                 scorer: Callable | None = None, lora: LoraSettings | None = None, frozen_params=None):
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {REFERENCE_MODES}, got {reference!r}.")
        if lora is not None and not lora.enabled:
            lora = None
        if lora is not None and frozen_params is None:
            raise ValueError("StepFns with LoRA needs frozen_params (Runtime.abstract_frozen_params()).")
        self.mesh, self.reference, self.lora, self.frozen_params = mesh, reference, lora, frozen_params
        self.dropout = lora is not None and lora.dropout > 0
        scorer = scorer or pair_logprobs
        terms = functools.partial(_loss_terms, model=model, pair_loss=pair_loss, reference=reference,
                                  vocab_chunk=vocab_chunk, scorer=scorer, lora=lora)
        param_sh = state_shardings.params
        scalar = S.replicated(mesh)
        acc_sh = {"grads": param_sh, "weight": scalar, "metrics": {k: scalar for k in METRIC_KEYS}}
        if self.dropout:
            acc_sh["rng"] = scalar
        self.acc_shardings, self.state_shardings = acc_sh, state_shardings

        def accumulate(params, ref_params, acc, batch):
            rng = dropout_rng = None
            if self.dropout:
                rng, dropout_rng = jax.random.split(acc["rng"])
            grads, (weight, sums, _) = jax.grad(terms, has_aux=True)(params, ref_params, batch, dropout_rng=dropout_rng)
            out = {"grads": jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), acc["grads"], grads),
                   "weight": acc["weight"] + weight,
                   "metrics": {k: acc["metrics"][k] + sums[k] for k in METRIC_KEYS}}
            if rng is not None:
                out["rng"] = rng
            return out

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

        def score(weights, batch):
            return scorer(weights, model, batch, vocab_chunk=vocab_chunk)

        # A one-entry PartitionSpec shards only the leading (row / pair) axis, so it is a valid prefix for
        # every batch field whatever its rank; the reference params are an empty pytree unless frozen or LoRA.
        batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        if lora is not None:
            ref_sh = jax.tree_util.tree_map(lambda x: x.sharding, frozen_params)
        else:
            ref_sh = param_sh if reference == "frozen" else None
        weights_sh = ref_sh if lora is not None else param_sh
        self._accumulate = jax.jit(accumulate, in_shardings=(param_sh, ref_sh, acc_sh, batch_sh), out_shardings=acc_sh,
                                   donate_argnums=(2,))
        self._apply = jax.jit(apply, in_shardings=(state_shardings, acc_sh), out_shardings=(state_shardings, scalar),
                              donate_argnums=(0,))
        self._evaluate = jax.jit(evaluate, in_shardings=(param_sh, ref_sh, batch_sh))
        self._score = jax.jit(score, in_shardings=(weights_sh, batch_sh))
        self._zero = jax.jit(zero_accumulator, in_shardings=(param_sh, None), out_shardings=acc_sh)

    def accumulate(self, params, ref_params, acc, batch: Batch):
        with S.activation_rules(self.mesh):
            return self._accumulate(params, ref_params, acc, batch)

    def apply(self, state, acc):
        with S.activation_rules(self.mesh):
            return self._apply(state, acc)

    def evaluate(self, params, ref_params, batch: Batch):
        with S.activation_rules(self.mesh):
            return self._evaluate(params, ref_params, batch)

    def score(self, weights, batch: Batch):
        with S.activation_rules(self.mesh):
            return self._score(weights, batch)

    def zero(self, params, rng=None):
        if self.dropout and rng is None:
            raise ValueError("lora.dropout > 0: zero() needs the step's dropout key (rng=).")
        return self._zero(params, rng if self.dropout else None)

    def lower(self, abstract_state, abstract_batch: Batch, abstract_ref=None) -> dict[str, Any]:
        """Lower every program with abstract inputs (``jax.ShapeDtypeStruct`` with shardings): ``{"accumulate",
        "apply", "evaluate"}`` -> ``jax.stages.Lowered``, ready to ``.compile()`` for the mesh's devices (which
        may be abstract TPU devices of a topology that is not attached). ``abstract_ref``: the second argument
        (default: the params for a frozen reference, the frozen weights under LoRA, else None)."""
        params = abstract_state.params
        if abstract_ref is not None:
            ref = abstract_ref
        elif self.lora is not None:
            ref = self.frozen_params
        else:
            ref = params if self.reference == "frozen" else None
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32) if self.dropout else None
        acc = jax.eval_shape(zero_accumulator, params, rng)
        acc = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), acc,
                                     self.acc_shardings)
        with S.activation_rules(self.mesh):
            return {"accumulate": self._accumulate.lower(params, ref, acc, abstract_batch),
                    "apply": self._apply.lower(abstract_state, acc),
                    "evaluate": self._evaluate.lower(params, ref, abstract_batch)}


def device_batch(local: Batch | dict, mesh) -> Batch:
    """A host-local numpy :class:`Batch` (or a :meth:`PairBatcher.make_batch` dict) -> a global :class:`Batch`
    of jax arrays, leading axis sharded over ``data`` x ``fsdp``.

    Every host passes its own slice (see :class:`jaxpref.data.PairBatcher`); the global leading size is the
    local one times the host count.
    """
    if isinstance(local, dict):
        local = Batch.from_host(local)
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(name, v):
        v = np.asarray(v)
        global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
        if global_shape[0] % n_batch_shards:
            raise ValueError(
                f"batch field {name!r} has {global_shape[0]} rows, not divisible by mesh data x fsdp = {n_batch_shards}; "
                "choose pairs_per_batch (and rows_per_batch) as multiples of data x fsdp"
                + (", and build the batcher with score_groups = data x fsdp (Runtime.batcher does)."
                   if name.startswith("score_") else "."))
        return jax.make_array_from_process_local_data(S.batch_sharding(mesh, v.ndim), v, global_shape)

    return local.replace(**{f.name: put(f.name, getattr(local, f.name)) for f in local.__dataclass_fields__.values()})


def dpo_pair_loss(loss_cfg) -> PairLoss:
    """``config.loss`` -> a pair loss over :func:`jaxpref.losses.dpo_loss` (every TRL loss type)."""
    from jaxpref.losses import dpo_loss

    kwargs: dict[str, Any] = dict(
        loss_type=list(loss_cfg.type) if isinstance(loss_cfg.type, (list, tuple)) else loss_cfg.type,
        beta=loss_cfg.beta,
        label_smoothing=loss_cfg.label_smoothing,
        f_divergence_type=loss_cfg.f_divergence_type,
        f_alpha_divergence_coef=loss_cfg.f_alpha_divergence_coef,
        discopop_tau=loss_cfg.discopop_tau,
    )
    if loss_cfg.loss_weights:
        kwargs["loss_weights"] = list(loss_cfg.loss_weights)

    def pair_loss(chosen, rejected, ref_chosen, ref_rejected, batch):
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_lengths=batch.chosen_lengths,
                        rejected_lengths=batch.rejected_lengths, **kwargs)

    return pair_loss
