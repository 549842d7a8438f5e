"""The runtime of a run: everything built once from the config, before (and without) any data or weights.

:class:`Runtime` holds the device mesh, the model *definition*, the tokenizer and its options, the
parameter shardings and the abstract parameters (``jax.ShapeDtypeStruct``s). From it come optimizers,
train-state shardings and jitted step functions (:meth:`Runtime.steps`) -- all without touching a
checkpoint or a data file, so a 7B run's programs can be lowered and compiled for a TPU topology that is
not attached (``python -m jaxpref.aot``). Real weights come in through :meth:`Runtime.initial_params`
(host arrays) and :meth:`Runtime.place` (sharded on the mesh).

The policy's runtime comes from :meth:`Runtime.build`; a reward model's (APO, ``algorithm=reward_model``)
from :meth:`Runtime.reward_model`, which shares the mesh and tokenizer.

**Trainable and frozen params (LoRA).** Without LoRA the train state's params are the model's weights. With
``config.lora.rank > 0`` they are the *trainable tree* ``{"lora": adapters}`` (adapters mirroring the module
paths of the model's params: a reward model's under ``"backbone"``), plus a reward model's ``"score"`` head
(float32) when ``lora.train_score_head``; the *frozen* weights -- the model's params less those heads, in
``model.param_dtype`` -- are placed once and passed to the steps as a non-donated argument. Adapters carry
logical axis names (:func:`jaxpref.models.lora.lora_logical_axes`), so :data:`jaxpref.sharding.LOGICAL_AXIS_RULES`
places them like everything else. :meth:`Runtime.abstract_params` describes the trainable tree,
:meth:`Runtime.abstract_frozen_params` the frozen one (None without LoRA); :meth:`Runtime.merge` turns
``(frozen or full weights, trainable)`` into plain model params (sampling, evaluation, HF export).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpref import data as D
from jaxpref import models as M
from jaxpref import sharding as S
from jaxpref.configs_base import resolved_train_section
from jaxpref.errors import ConfigError
from jaxpref.models import lora as L
from jaxpref.train.state import make_optimizer, state_shardings
from jaxpref.train.step import Batch, PairLoss, StepFns

log = logging.getLogger(__name__)


def maybe_initialize_distributed(cfg) -> None:
    """``jax.distributed.initialize`` when the config or the environment asks for multi-host.

    ``config.distributed.initialize``: ``"auto"`` (default: initialise when a coordinator address is set, or
    under SLURM with more than one task, or on a TPU pod), ``"true"`` (always; JAX auto-detects the cluster),
    ``"false"`` (never). ``coordinator_address``/``num_processes``/``process_id`` pass through.
    ``cpu_collectives`` (e.g. ``"gloo"``) enables cross-process collectives on CPU.
    """
    d = cfg.distributed
    mode = str(d.initialize).lower()
    if mode == "false" or jax.distributed.is_initialized():
        return
    if d.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    env = os.environ
    wanted = (mode == "true" or bool(d.coordinator_address) or int(env.get("SLURM_NTASKS", "1")) > 1
              or "TPU_WORKER_HOSTNAMES" in env or "JAX_COORDINATOR_ADDRESS" in env)
    if not wanted:
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=int(d.num_processes),
                      process_id=int(d.process_id))
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def build_mesh(cfg, devices=None):
    """The ``(data, fsdp, tensor)`` mesh of ``config.mesh`` over ``devices`` (default: all devices)."""
    m = cfg.mesh
    if devices is None:
        devices = jax.devices()
        if m.num_devices:
            if jax.process_count() > 1:
                raise ConfigError("config.mesh.num_devices is for single-host runs; leave it 0 on multi-host runs.")
            if m.num_devices > len(devices):
                raise ConfigError(f"config.mesh.num_devices={m.num_devices} but only {len(devices)} devices are "
                                  "available; lower it (0 = all).")
            devices = devices[: m.num_devices]
    try:
        return S.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None


def model_config(cfg) -> M.ModelConfig:
    """The :class:`ModelConfig` of ``config.model`` -- read from ``hf_dir``'s config.json or a preset -- with
    the config's dtypes and remat policy. Reads no weights."""
    mc = cfg.model
    compute = dict(dtype=mc.dtype, param_dtype=mc.param_dtype, remat_policy=mc.remat_policy)
    if mc.hf_dir:
        return M.load_hf_config(model_dir(cfg), **compute)
    if not mc.preset:
        raise ConfigError(f"config.model needs hf_dir (a local HF checkpoint) or preset (one of {sorted(M.PRESETS)}).")
    try:
        return M.preset(mc.preset, **dict(mc.overrides), **compute)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.model: {e}") from None


def model_dir(cfg) -> str:
    """``config.model.hf_dir`` as a local directory (a Hub id is looked up in the local Hugging Face cache)."""
    hf_dir = cfg.model.hf_dir
    resolve = getattr(M, "resolve_model_dir", None)
    if resolve is not None:
        return resolve(hf_dir)
    if not os.path.isdir(hf_dir):
        raise ConfigError(f"config.model.hf_dir={hf_dir!r} does not exist; point it to a local Hugging Face "
                          "model directory (config.json + safetensors).")
    return hf_dir


def tokenizer_path(cfg) -> str:
    """``config.tokenizer.path``, defaulting to the model's own tokenizer (``model.hf_dir``)."""
    if cfg.tokenizer.path:
        return cfg.tokenizer.path
    if cfg.model.hf_dir:
        return model_dir(cfg)
    raise ConfigError("config.tokenizer.path is empty and the model is a preset (no hf_dir with a tokenizer); set "
                      "it, e.g. --config.tokenizer.path=mistral.")


def build_tokenizer(cfg, config: M.ModelConfig):
    """The tokenizer of :func:`tokenizer_path`; a vocabulary that does not fit the model is a ConfigError."""
    path = tokenizer_path(cfg)
    try:
        tok = D.load_tokenizer(path, chat_template=cfg.tokenizer.chat_template or None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer {path!r}: {e}") from None
    own = bool(cfg.model.hf_dir) and path == model_dir(cfg)
    # A model's own tokenizer may be smaller than its (padded) embedding table; any other mismatch means the
    # token ids would index the wrong embeddings.
    if tok.vocab_size > config.vocab_size or (tok.vocab_size != config.vocab_size and not own):
        raise ConfigError(f"tokenizer {path!r} has {tok.vocab_size} tokens but the model's vocab_size is "
                          f"{config.vocab_size}; use the model's own tokenizer (leave config.tokenizer.path empty) "
                          "or one with the same vocabulary.")
    return tok


def tokenize_options(cfg) -> D.TokenizeOptions:
    dc = cfg.data
    return D.TokenizeOptions(max_length=dc.max_length, max_prompt_length=dc.max_prompt_length,
                             prompt_truncation=dc.prompt_truncation)


def host_tree(tree):
    """A pytree of (possibly multi-host sharded) arrays as host numpy arrays, one leaf at a time."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(get, tree)


def lora_settings(cfg) -> L.LoraSettings:
    """``config.lora`` as :class:`~jaxpref.models.lora.LoraSettings` (``rank = 0``: off)."""
    lo = cfg.lora
    return L.LoraSettings(rank=int(lo.rank), alpha=float(lo.alpha), dropout=float(lo.dropout),
                          target_modules=tuple(lo.target_modules))


@dataclasses.dataclass
class Runtime:
    """What a run is made of, built once: ``mesh``, ``model`` (a Linen module; a :class:`~jaxpref.models.reward.
    RewardModel` for reward models), ``tokenizer`` and ``tok_options``, ``boxed_params`` (a function returning
    the *trainable* params with their logical-axis boxes, for shardings), ``param_shardings`` (theirs), the
    config and, for reward models, the policy runtime it came from. ``scorer`` is what its steps compare
    (None = summed log-probs). ``lora``: the adapter settings (rank 0 = off); ``boxed_model`` /
    ``model_shardings``: the model's full params; ``boxed_frozen`` / ``frozen_shardings``: the frozen part
    under LoRA (None without)."""

    cfg: Any
    mesh: Any
    model: Any
    tokenizer: Any
    tok_options: D.TokenizeOptions
    boxed_params: Callable[[], Any]
    param_shardings: Any
    train_section: str = "train"
    scorer: Callable | None = None
    policy: "Runtime | None" = None
    lora: L.LoraSettings = L.LoraSettings()
    boxed_model: Callable[[], Any] | None = None
    model_shardings: Any = None
    boxed_frozen: Callable[[], Any] | None = None
    frozen_shardings: Any = None
    # abstract boxed trees ("model", "trainable", "frozen"), traced once: a 7B init takes seconds to trace
    shapes: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, cfg, *, devices=None, model=None, tokenizer=None) -> "Runtime":
        """The policy's runtime from ``cfg``: distributed init, mesh (over ``devices``, e.g. a TPU topology's
        abstract devices), model definition (``model`` overrides ``config.model``, e.g. a task's own policy),
        tokenizer (``tokenizer`` overrides loading ``config.tokenizer``), LoRA settings (``config.lora``)."""
        if devices is None:
            maybe_initialize_distributed(cfg)
        mesh = build_mesh(cfg, devices)
        model = model if model is not None else M.LlamaForCausalLM(model_config(cfg))
        tok = tokenizer if tokenizer is not None else build_tokenizer(cfg, model.config)
        return cls._for_model(cfg, mesh, model, tok, tokenize_options(cfg), lora=lora_settings(cfg))

    @classmethod
    def _for_model(cls, cfg, mesh, model, tok, tok_options, *, lora: L.LoraSettings, **fields) -> "Runtime":
        boxed_model = _boxed_init(model)
        heads = _trainable_heads(cfg, model, lora)
        shapes = {"model": jax.eval_shape(boxed_model)}
        model_sh = _shardings(shapes["model"], mesh)
        if lora.enabled:
            boxed = functools.partial(_boxed_trainable, boxed_model, model, lora, heads)
            frozen = functools.partial(_without, boxed_model, heads)
            shapes["trainable"] = jax.eval_shape(boxed)
            shapes["frozen"] = {k: v for k, v in shapes["model"].items() if k not in heads}
            param_sh, frozen_sh = _shardings(shapes["trainable"], mesh), _shardings(shapes["frozen"], mesh)
        else:
            boxed, frozen, param_sh, frozen_sh = boxed_model, None, model_sh, None
            shapes["trainable"] = shapes["model"]
        return cls(cfg, mesh, model, tok, tok_options, boxed, param_sh, lora=lora, boxed_model=boxed_model,
                   model_shardings=model_sh, boxed_frozen=frozen, frozen_shardings=frozen_sh, shapes=shapes, **fields)

    def reward_model(self) -> "Runtime":
        """The reward model's runtime: this policy's decoder with a scalar head, same mesh, tokenizer and LoRA
        settings (adapters under ``"backbone"``), trained with ``config.reward_model.train`` and no reference."""
        from jaxpref.models import reward as R

        return self._for_model(self.cfg, self.mesh, R.RewardModel(self.model.config), self.tokenizer,
                               self.tok_options, lora=self.lora, train_section="reward_model",
                               scorer=R.sequence_rewards, policy=self)

    # ---- parameters ---------------------------------------------------------------------------------------

    @property
    def adapter_root(self) -> tuple[str, ...]:
        """Where the decoder sits in the model's params: ``()`` for a causal LM, ``("backbone",)`` for a reward model
        (the adapter tree is nested the same way)."""
        return _adapter_root(self.model)

    @property
    def trainable_heads(self) -> tuple[str, ...]:
        """Top-level params that train beside the adapters under LoRA (a reward model's ``"score"``)."""
        return _trainable_heads(self.cfg, self.model, self.lora)

    def abstract_params(self):
        """The *trainable* params (the train state's; without LoRA the whole model) as ``jax.ShapeDtypeStruct``s
        with their shardings (no memory allocated)."""
        return _abstract(self.shapes["trainable"], self.param_shardings)

    def abstract_frozen_params(self):
        """LoRA: the frozen weights the steps take as their second argument (``jax.ShapeDtypeStruct``s with
        shardings); None without LoRA."""
        if not self.lora.enabled:
            return None
        return _abstract(self.shapes["frozen"], self.frozen_shardings)

    def abstract_model_params(self):
        """The model's full params as ``jax.ShapeDtypeStruct``s with shardings: what ``model.apply`` and the
        sampler take (under LoRA the merged model's; equal to :meth:`abstract_params` without LoRA)."""
        return _abstract(self.shapes["model"], self.model_shardings)

    def param_counts(self) -> dict:
        """``{"trainable_params", "total_params"}`` (scalars; equal without LoRA; with LoRA total = frozen +
        trainable), from abstract shapes."""
        trainable = L.count_params(self.abstract_params())
        return {"trainable_params": trainable, "total_params": trainable + L.count_params(self.abstract_frozen_params())}

    def initial_params(self, *, seed: int | None = None):
        """Host params to start from: the checkpoint of ``config.model.hf_dir`` or a seeded random init of the
        preset (policy); for a reward model, the policy's with a fresh scalar head (``reward_model.head_seed``).
        These are the model's full weights (under LoRA: the base; see :meth:`initial_trainable`)."""
        if self.policy is not None:
            return self.reward_params_from(self.policy.initial_params(seed=seed))
        cfg = self.cfg
        if cfg.model.hf_dir:
            params = M.hf_to_flax_params(model_dir(cfg), self.model.config, dtype=jnp.dtype(cfg.model.param_dtype))
            return jax.tree_util.tree_map(jnp.asarray, params)
        return M.init_params(self.model.config, cfg.seed if seed is None else seed)

    def reward_params_from(self, policy_params):
        """Reward-model params from policy params: the decoder kept, ``lm_head`` dropped, a fresh seeded head.
        The decoder's arrays are the policy's own (placed policy weights give a placed backbone, no copy)."""
        from jaxpref.models import reward as R

        return R.from_causal_lm(policy_params, self.model.config, seed=self.cfg.reward_model.head_seed)

    def initial_trainable(self, params):
        """The train state's starting params for full weights ``params``: ``params`` themselves without LoRA; with
        LoRA fresh adapters (``B = 0``, so the model starts as the base; seeded by ``config.seed``) and float32
        copies of the trainable heads."""
        if not self.lora.enabled:
            return params
        rng = jax.random.PRNGKey(self.cfg.seed)
        if self.adapter_root:  # a reward model's adapters are drawn apart from its policy's
            rng = jax.random.fold_in(rng, 1)
        adapters = L.init_lora(self.model.config, self.lora, rng)
        for key in reversed(self.adapter_root):
            adapters = {key: adapters}
        return {"lora": adapters, **{k: jnp.asarray(params[k], jnp.float32) for k in self.trainable_heads}}

    def frozen_part(self, params):
        """LoRA: the frozen part of full weights ``params`` (all but the trainable heads; the same arrays)."""
        return {k: v for k, v in params.items() if k not in self.trainable_heads}

    def place(self, params, *, copy: bool = True):
        """The model's full ``params`` (host or device arrays) placed with the model's shardings. ``copy=True``
        (default): a fresh copy, never an alias of buffers that a donated train state may own. ``copy=False``:
        arrays already placed so stay the same arrays -- for weights no step donates (LoRA's frozen base)."""
        placed = jax.device_put(params, self.model_shardings)
        if not copy:
            return placed
        copy_fn = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=self.model_shardings)
        return copy_fn(placed)

    def share_base(self, params):
        """What an algorithm hands every :class:`~jaxpref.train.trainer.Trainer` of a run as its ``params``: with
        LoRA the base weights placed once (each Trainer keeps these arrays, so a run holds one copy of the base
        however many sessions it opens); without LoRA ``params`` unchanged (each Trainer places its own state)."""
        return self.place(params, copy=False) if self.lora.enabled else params

    def merge(self, weights, trainable):
        """Plain model params (what ``model.apply``, sampling and the HF export take) from ``weights`` (the full or
        frozen weights) and a train state's ``trainable`` params: without LoRA ``trainable`` itself (``weights``
        when it is None); with LoRA the weights with the trained heads (in ``param_dtype``) and every adapted
        kernel replaced by ``W + (alpha/r) A B`` (:func:`~jaxpref.models.lora.merge_lora`; untouched leaves are
        the same arrays, so only the adapted kernels take new memory)."""
        if trainable is None:
            return weights
        if not self.lora.enabled:
            return trainable
        dtype = jnp.dtype(self.model.config.param_dtype)
        full = {**weights, **{k: jnp.asarray(trainable[k]).astype(dtype) for k in self.trainable_heads}}
        adapters = trainable["lora"]
        node, parents = full, []
        for key in self.adapter_root:
            parents.append((node, key))
            node, adapters = node[key], adapters[key]
        merged = L.merge_lora(node, adapters, self.model.config, self.lora)
        for parent, key in reversed(parents):
            merged = {**parent, key: merged}
        return merged

    # ---- optimization -------------------------------------------------------------------------------------

    @property
    def train_cfg(self):
        """The resolved train section (``config.train`` or the reward model's overlay on it)."""
        return resolved_train_section(self.cfg, self.train_section)

    def optimizer(self, total_steps: int, train_cfg=None):
        """``(tx, schedule)`` of the train section for a run of ``total_steps`` optimizer steps."""
        return make_optimizer(train_cfg or self.train_cfg, total_steps)

    def state_shardings(self, tx):
        return state_shardings(self.boxed_params, tx, self.mesh)

    def steps(self, pair_loss: PairLoss, tx, schedule, *, reference: str) -> StepFns:
        """Jitted accumulate/apply/evaluate steps of ``pair_loss`` with ``tx`` (see :class:`StepFns`); under LoRA
        they train the adapters on the frozen weights of :meth:`abstract_frozen_params`."""
        return StepFns(self.model, tx, schedule, pair_loss, mesh=self.mesh, state_shardings=self.state_shardings(tx),
                       reference=reference, vocab_chunk=self.train_cfg.vocab_chunk, scorer=self.scorer,
                       lora=self.lora if self.lora.enabled else None, frozen_params=self.abstract_frozen_params())

    # ---- data ---------------------------------------------------------------------------------------------

    def tokenize(self, rows, *, progress: bool = False) -> list[D.TokenizedPair]:
        return D.tokenize_dataset(rows, self.tokenizer, self.tok_options, skip_invalid=self.cfg.data.skip_invalid,
                                  progress=progress)

    def batch_options(self, *, shuffle: bool = True) -> D.BatchOptions:
        dc, tc = self.cfg.data, self.train_cfg
        n_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if tc.pairs_per_batch % n_shards:
            raise ConfigError(f"config.train.pairs_per_batch={tc.pairs_per_batch} must be a multiple of "
                              f"mesh data x fsdp = {n_shards}.")
        return D.BatchOptions(pairs_per_batch=tc.pairs_per_batch, buckets=tuple(dc.buckets), packing=dc.packing,
                              rows_per_batch=dc.rows_per_batch, shuffle=shuffle, seed=self.cfg.seed,
                              sort_window=dc.sort_window, skip_invalid=dc.skip_invalid, score_groups=n_shards)

    def batcher(self, pairs: list[D.TokenizedPair], *, shuffle: bool = True) -> D.PairBatcher:
        return D.PairBatcher(pairs, self.batch_options(shuffle=shuffle), pad_id=self.tokenizer.pad_id,
                             process_index=jax.process_index(), process_count=jax.process_count())

    def abstract_batch(self, length: int | None = None) -> Batch:
        """The largest training batch's shapes (largest bucket; packed rows when packing; the LM head on every
        position, the most a batch can score), for lowering."""
        dc, tc = self.cfg.data, self.train_cfg
        length = length or max(dc.buckets)
        pairs = tc.pairs_per_batch
        rows = (dc.rows_per_batch or pairs) if dc.packing else 2 * pairs
        groups = rows if dc.packing else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        width = (rows // groups) * (length - 1)
        return Batch.abstract(pairs, rows, length, width, sharding=lambda ndim: S.batch_sharding(self.mesh, 1),
                              score_groups=groups)


def _shardings(abstract_boxed, mesh):
    """``NamedSharding``s of an abstract boxed params tree (``jax.eval_shape`` of a boxed init)."""
    return S.logical_to_sharding(nn.get_partition_spec(abstract_boxed), mesh)


def _abstract(abstract_boxed, shardings):
    shapes = nn.meta.unbox(abstract_boxed)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def _boxed_init(model):
    """The model's params with their logical-axis boxes (call it under ``jax.eval_shape``)."""
    return lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]


def _adapter_root(model) -> tuple[str, ...]:
    from jaxpref.models import reward as R

    return ("backbone",) if isinstance(model, R.RewardModel) else ()


def _trainable_heads(cfg, model, lora: L.LoraSettings) -> tuple[str, ...]:
    from jaxpref.models import reward as R

    if lora.enabled and isinstance(model, R.RewardModel) and cfg.lora.train_score_head:
        return ("score",)
    return ()


def _without(boxed_model, heads):
    return {k: v for k, v in boxed_model().items() if k not in heads}


def _boxed_trainable(boxed_model, model, lora: L.LoraSettings, heads):
    """The trainable tree with logical-axis boxes: adapters named by :func:`lora_logical_axes` (nested like the
    decoder in the model's params) and the float32 heads with their own names."""
    full = boxed_model() if heads else {}
    adapters = L.init_lora(model.config, lora, jax.random.PRNGKey(0))
    names = L.lora_logical_axes(model.config, lora)
    boxed = jax.tree_util.tree_map(lambda a, n: nn.Partitioned(a, names=tuple(n)), adapters, names)
    for key in reversed(_adapter_root(model)):
        boxed = {key: boxed}
    heads_f32 = {k: full[k].replace_boxed(full[k].value.astype(jnp.float32)) for k in heads}
    return {"lora": boxed, **heads_f32}
