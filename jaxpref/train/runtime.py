"""The runtime of a run: everything built once from the config, before (and without) any data or weights.

:class:`Runtime` holds the device mesh, the model *definition*, the tokenizer and its options, the
parameter shardings and the abstract parameters (``jax.ShapeDtypeStruct``s). From it come optimizers,
train-state shardings and jitted step functions (:meth:`Runtime.steps`) -- all without touching a
checkpoint or a data file, so a 7B run's programs can be lowered and compiled for a TPU topology that is
not attached (``python -m jaxpref.aot``). Real weights come in through :meth:`Runtime.initial_params`
(host arrays) and :meth:`Runtime.place` (sharded on the mesh).

The policy's runtime comes from :meth:`Runtime.build`; a reward model's (APO, ``algorithm=reward_model``)
from :meth:`Runtime.reward_model`, which shares the mesh and tokenizer.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass
class Runtime:
    """What a run is made of, built once: ``mesh``, ``model`` (a Linen module; a :class:`~jaxpref.models.reward.
    RewardModel` for reward models), ``tokenizer`` and ``tok_options``, ``boxed_params`` (a function returning
    the params with their logical-axis boxes, for shardings), ``param_shardings``, the config and, for reward
    models, the policy runtime it came from. ``scorer`` is what its steps compare (None = summed log-probs)."""

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

    @classmethod
    def build(cls, cfg, *, devices=None, model=None, tokenizer=None) -> "Runtime":
        """The policy's runtime from ``cfg``: distributed init, mesh (over ``devices``, e.g. a TPU topology's
        abstract devices), model definition (``model`` overrides ``config.model``, e.g. a task's own policy),
        tokenizer (``tokenizer`` overrides loading ``config.tokenizer``)."""
        if devices is None:
            maybe_initialize_distributed(cfg)
        mesh = build_mesh(cfg, devices)
        model = model if model is not None else M.LlamaForCausalLM(model_config(cfg))
        tok = tokenizer if tokenizer is not None else build_tokenizer(cfg, model.config)
        boxed = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]  # noqa: E731
        return cls(cfg, mesh, model, tok, tokenize_options(cfg), boxed, _param_shardings(boxed, mesh))

    def reward_model(self) -> "Runtime":
        """The reward model's runtime: this policy's decoder with a scalar head, same mesh and tokenizer, trained
        with ``config.reward_model.train`` and no reference."""
        from jaxpref.models import reward as R

        model = R.RewardModel(self.model.config)
        boxed = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]  # noqa: E731
        return dataclasses.replace(self, model=model, boxed_params=boxed,
                                   param_shardings=_param_shardings(boxed, self.mesh), train_section="reward_model",
                                   scorer=R.sequence_rewards, policy=self)

    # ---- parameters ---------------------------------------------------------------------------------------

    def abstract_params(self):
        """``jax.ShapeDtypeStruct`` params with their shardings (no memory allocated)."""
        shapes = jax.eval_shape(lambda: nn.meta.unbox(self.boxed_params()))
        return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                                      self.param_shardings)

    def initial_params(self, *, seed: int | None = None):
        """Host params to start from: the checkpoint of ``config.model.hf_dir`` or a seeded random init of the
        preset (policy); for a reward model, the policy's with a fresh scalar head (``reward_model.head_seed``)."""
        if self.policy is not None:
            return self.reward_params_from(self.policy.initial_params(seed=seed))
        cfg = self.cfg
        if cfg.model.hf_dir:
            params = M.hf_to_flax_params(model_dir(cfg), self.model.config, dtype=jnp.dtype(cfg.model.param_dtype))
            return jax.tree_util.tree_map(jnp.asarray, params)
        return M.init_params(self.model.config, cfg.seed if seed is None else seed)

    def reward_params_from(self, policy_params):
        """Reward-model params from policy params: the decoder kept, ``lm_head`` dropped, a fresh seeded head."""
        from jaxpref.models import reward as R

        return R.from_causal_lm(policy_params, self.model.config, seed=self.cfg.reward_model.head_seed)

    def place(self, params):
        """``params`` (host or device arrays) placed with the runtime's shardings, as a fresh copy (never an
        alias of buffers that a donated train state may own)."""
        copy = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=self.param_shardings)
        return copy(jax.device_put(params, self.param_shardings))

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
        """Jitted accumulate/apply/evaluate steps of ``pair_loss`` with ``tx`` (see :class:`StepFns`)."""
        return StepFns(self.model, tx, schedule, pair_loss, mesh=self.mesh, state_shardings=self.state_shardings(tx),
                       reference=reference, vocab_chunk=self.train_cfg.vocab_chunk, scorer=self.scorer)

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
                              sort_window=dc.sort_window, skip_invalid=dc.skip_invalid)

    def batcher(self, pairs: list[D.TokenizedPair], *, shuffle: bool = True) -> D.PairBatcher:
        return D.PairBatcher(pairs, self.batch_options(shuffle=shuffle), pad_id=self.tokenizer.pad_id,
                             process_index=jax.process_index(), process_count=jax.process_count())

    def abstract_batch(self, length: int | None = None) -> Batch:
        """The largest training batch's shapes (largest bucket; packed rows when packing), for lowering."""
        dc, tc = self.cfg.data, self.train_cfg
        length = length or max(dc.buckets)
        pairs = tc.pairs_per_batch
        rows = (dc.rows_per_batch or pairs) if dc.packing else 2 * pairs
        width = length - 1 if dc.packing else length
        return Batch.abstract(pairs, rows, length, width, sharding=lambda ndim: S.batch_sharding(self.mesh, 1))


def _param_shardings(boxed_params, mesh):
    abstract = jax.eval_shape(boxed_params)
    return S.logical_to_sharding(nn.get_partition_spec(abstract), mesh)
