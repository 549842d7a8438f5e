"""The shared training core: model, data, mesh, reference, optimizer, checkpoints, logging, the loop.

Algorithms are thin orchestration over :class:`Trainer`: DPO calls :meth:`Trainer.fit` once; ROPO changes
the pair weights and data between rounds; APO holds two trainers. Everything a run needs comes from one
``ml_collections.ConfigDict`` (see ``configs/`` and :mod:`jaxpref.configs_base` for every key).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref import data as D
from jaxpref import models as M
from jaxpref import sharding as S
from jaxpref.train import refcache
from jaxpref.train.checkpoint import Checkpointer, abstract_with_shardings
from jaxpref.train.logging import MetricLogger
from jaxpref.train.state import create_sharded_state, make_optimizer, state_shardings
from jaxpref.train.step import PairLoss, StepFns, device_batch, dpo_pair_loss

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


# ---- setup helpers (each usable alone) -----------------------------------------------------------------


def maybe_initialize_distributed(cfg) -> None:
    """``jax.distributed.initialize`` when the config or the environment asks for multi-host.

    ``config.distributed.initialize``: ``"auto"`` (default: initialise when a coordinator address is set, or
    under SLURM with more than one task, or on a TPU pod), ``True`` (always; JAX auto-detects the cluster),
    ``False`` (never). ``coordinator_address``/``num_processes``/``process_id`` pass through.
    ``cpu_collectives`` (e.g. ``"gloo"``) enables cross-process collectives on CPU.
    """
    d = cfg.get("distributed") or {}
    mode = str(d.get("initialize", "auto")).lower()
    mode = True if mode in ("true", "1", "yes") else False if mode in ("false", "0", "no") else "auto"
    if mode is False or jax.distributed.is_initialized():
        return
    if d.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", d.get("cpu_collectives"))
    env = os.environ
    wanted = (mode is True or bool(d.get("coordinator_address"))
              or int(env.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in env
              or "JAX_COORDINATOR_ADDRESS" in env)
    if not wanted:
        return
    kwargs = {}
    if d.get("coordinator_address"):
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=int(d.num_processes),
                      process_id=int(d.process_id))
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def build_mesh(cfg):
    m = cfg.get("mesh") or {}
    devices = jax.devices()
    if m.get("num_devices", 0):
        if jax.process_count() > 1:
            raise ConfigError("config.mesh.num_devices is for single-host runs; leave it 0 on multi-host runs.")
        devices = devices[: m.num_devices]
    try:
        return S.make_mesh(m.get("data", 1), m.get("fsdp", -1), m.get("tensor", 1), devices=devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None


def build_model(cfg, *, rng_seed: int | None = None) -> tuple[M.LlamaForCausalLM, dict]:
    """``config.model``: ``hf_dir`` (a local HF directory) or ``preset`` (random init with ``config.seed``),
    plus ``dtype``, ``param_dtype``, ``remat_policy`` and ``overrides`` (dict of ModelConfig fields)."""
    mc = cfg.model
    compute = dict(dtype=mc.get("dtype", "float32"), param_dtype=mc.get("param_dtype", "float32"),
                   remat_policy=mc.get("remat_policy", "none"))
    if mc.get("hf_dir"):
        if not os.path.isdir(mc.hf_dir):
            raise ConfigError(f"config.model.hf_dir={mc.hf_dir!r} does not exist; point it to a local Hugging Face "
                              "model directory (config.json + safetensors).")
        model, params = M.from_pretrained(mc.hf_dir, dtype=jnp.dtype(compute["param_dtype"]),
                                          compute_dtype=jnp.dtype(compute["dtype"]),
                                          remat_policy=compute["remat_policy"])
        return model, params
    if not mc.get("preset"):
        raise ConfigError("config.model needs hf_dir (a local HF checkpoint) or preset (one of "
                          f"{sorted(M.PRESETS)}).")
    config = M.preset(mc.preset, **dict(mc.get("overrides") or {}), **compute)
    seed = cfg.get("seed", 0) if rng_seed is None else rng_seed
    return M.LlamaForCausalLM(config), M.init_params(config, seed)


def build_tokenizer(cfg, model_config: M.ModelConfig):
    path = cfg.tokenizer.path
    try:
        tok = D.load_tokenizer(path)
    except (OSError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config.tokenizer.path={path!r}: {e}") from None
    if tok.vocab_size > model_config.vocab_size:
        raise ConfigError(f"tokenizer {path!r} has {tok.vocab_size} tokens but the model's vocab_size is "
                          f"{model_config.vocab_size}; use the model's own tokenizer.")
    return tok


def resolve_data_path(path: str) -> str:
    """``"hh"`` is the shipped Anthropic HH harmless-base sample."""
    return D.SHIPPED_HH if path in ("hh", "hh_harmless_test") else path


def load_rows(cfg) -> tuple[D.PreferenceDataset, D.PreferenceDataset | None]:
    """Train and (optional) eval rows from ``config.data``: ``train_path``, ``format``, ``skip_invalid``,
    ``max_rows``, ``eval_path`` or ``eval_fraction`` (a seeded split of the train file), ``flip_rate``."""
    dc = cfg.data
    rows = D.load_preferences(resolve_data_path(dc.train_path), format=dc.get("format", "auto"),
                              skip_invalid=dc.get("skip_invalid", False), max_rows=dc.get("max_rows"))
    eval_rows = None
    if dc.get("eval_path"):
        eval_rows = D.load_preferences(resolve_data_path(dc.eval_path), format=dc.get("format", "auto"),
                                       skip_invalid=dc.get("skip_invalid", False))
    elif dc.get("eval_fraction", 0.0):
        perm = np.random.default_rng(cfg.get("seed", 0)).permutation(len(rows))
        n_eval = max(1, int(round(dc.eval_fraction * len(rows))))
        eval_rows = D.PreferenceDataset([rows[i] for i in sorted(perm[:n_eval])], rows.report)
        rows = D.PreferenceDataset([rows[i] for i in sorted(perm[n_eval:])], rows.report)
    if dc.get("flip_rate", 0.0):
        rows, _ = D.flip_labels(rows, dc.flip_rate, seed=dc.get("flip_seed", cfg.get("seed", 0)))
    return rows, eval_rows


def tokenize_options(cfg) -> D.TokenizeOptions:
    dc = cfg.data
    return D.TokenizeOptions(max_length=dc.get("max_length", 512), max_prompt_length=dc.get("max_prompt_length", 256),
                             prompt_truncation=dc.get("prompt_truncation", "keep_end"))


def batch_options(cfg, *, shuffle: bool = True) -> D.BatchOptions:
    dc, tc = cfg.data, cfg.train
    buckets = tuple(dc.get("buckets") or (dc.get("max_length", 512),))
    return D.BatchOptions(pairs_per_batch=tc.pairs_per_batch, buckets=buckets, packing=dc.get("packing", False),
                          rows_per_batch=dc.get("rows_per_batch"), shuffle=shuffle, seed=cfg.get("seed", 0),
                          sort_window=dc.get("sort_window", 8), skip_invalid=dc.get("skip_invalid", False))


def host_tree(tree):
    """A pytree of (possibly multi-host sharded) arrays as host numpy arrays, one leaf at a time."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(get, tree)


# ---- the trainer -----------------------------------------------------------------------------------


class Trainer:
    """Builds everything from ``cfg`` and trains the policy with a pairwise loss.

    Args:
      cfg: the run config.
      workdir: checkpoints, metrics.jsonl, tensorboard/, hf_export/ and results go here.
      pair_loss: defaults to :func:`jaxpref.train.step.dpo_pair_loss` of ``cfg.loss``.
      rows: train rows to use instead of loading ``cfg.data`` (algorithms pass their own).
      model_and_params: start from this model and params instead of ``cfg.model``.
      reference_params: the reference policy (default: the starting params); iterative algorithms pass
        the original policy here while the policy itself continues from the previous round.
      scorer: what the pair loss compares (default summed log-probs; a reward model passes
        :func:`jaxpref.models.reward.sequence_rewards`); reference: overrides ``config.reference.mode``
        (a reward model trains with ``"none"``).
    """

    def __init__(self, cfg, workdir: str, *, pair_loss: PairLoss | None = None,
                 rows: D.PreferenceDataset | None = None, eval_rows: D.PreferenceDataset | None = None,
                 model_and_params: tuple[M.LlamaForCausalLM, dict] | None = None,
                 reference_params: dict | None = None, progress: bool = True, scorer=None,
                 reference: str | None = None):
        self.cfg, self.workdir, self.progress = cfg, workdir, progress
        os.makedirs(workdir, exist_ok=True)
        maybe_initialize_distributed(cfg)
        self.mesh = build_mesh(cfg)
        self.model, init_params = model_and_params or build_model(cfg)
        self.tokenizer = build_tokenizer(cfg, self.model.config)
        if rows is None:
            rows, loaded_eval = load_rows(cfg)
            eval_rows = eval_rows if eval_rows is not None else loaded_eval
        self.rows, self.eval_rows = rows, eval_rows
        self.tok_options = tokenize_options(cfg)
        skip = cfg.data.get("skip_invalid", False)
        self.pairs = D.tokenize_dataset(rows, self.tokenizer, self.tok_options, skip_invalid=skip, progress=progress)
        n_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if cfg.train.pairs_per_batch % n_shards:
            raise ConfigError(f"config.train.pairs_per_batch={cfg.train.pairs_per_batch} must be a multiple of "
                              f"mesh data x fsdp = {n_shards}.")
        self.batcher = D.PairBatcher(self.pairs, batch_options(cfg), pad_id=self.tokenizer.pad_id,
                                     process_index=jax.process_index(), process_count=jax.process_count())
        self.eval_batcher = self.batcher_for(eval_rows) if eval_rows is not None else None

        tc = cfg.train
        self.grad_accum = int(tc.get("grad_accum_steps", 1))
        steps = tc.get("num_steps") or math.ceil(tc.get("num_epochs", 1) * self.batcher.batches_per_epoch / self.grad_accum)
        self.total_steps = int(steps)
        self.tx, self.schedule = make_optimizer(tc, self.total_steps)
        boxed = lambda: self.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
        self.shardings = state_shardings(boxed, self.tx, self.mesh)
        self.reference = reference or cfg.get("reference", {}).get("mode", "frozen")
        if cfg.loss.get("reference_free", False):
            self.reference = "none"
        self.step_fns = StepFns(self.model, self.tx, self.schedule, pair_loss or dpo_pair_loss(cfg.loss),
                                mesh=self.mesh, state_shardings=self.shardings, reference=self.reference,
                                vocab_chunk=tc.get("vocab_chunk", 8192), scorer=scorer)
        self.state = create_sharded_state(init_params, self.tx, jax.random.PRNGKey(cfg.get("seed", 0)), self.shardings)
        self.ref_params = None
        self.ref_table = None
        ref_source = init_params if reference_params is None else reference_params
        self._ref_source, self._ref_placed_on_demand = ref_source, None
        if self.reference != "none":
            # a copy, never an alias of the policy's buffers (the state is donated every step)
            placed = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=self.shardings.params)(
                jax.device_put(ref_source, self.shardings.params))
            if self.reference == "frozen":
                self.ref_params = placed
            else:
                self._prepare_reference_cache(ref_source, placed)
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.get("keep_checkpoints", 2),
                                         async_save=tc.get("async_checkpointing", True))
        self.logger = MetricLogger(workdir)
        self._stop_requested = False

    # ---- reference log-probs -------------------------------------------------------------------------

    def _prepare_reference_cache(self, ref_source, ref_placed) -> None:
        rc = self.cfg.get("reference", {})
        settings = dict(self.tok_options.__dict__, buckets=list(self.batcher.buckets), packing=self.batcher.options.packing)
        key = refcache.fingerprint(refcache.params_digest(ref_source), self.pairs, self.cfg.tokenizer.path, settings)
        cache_dir = rc.get("cache_dir") or os.path.join(self.workdir, "ref_cache")
        self.ref_cache = refcache.ReferenceCache(cache_dir, key, len(self.pairs))
        plan_batcher = D.PairBatcher(self.pairs, batch_options(self.cfg, shuffle=False), pad_id=self.tokenizer.pad_id,
                                     process_index=jax.process_index(), process_count=jax.process_count())

        def logps(local):
            _, _, out = self.step_fns.evaluate(ref_placed, None, self._to_device(local, with_ref=False))
            got = host_tree({"c": out["policy_chosen"], "r": out["policy_rejected"]})
            idx = host_tree(self._to_device({"i": local["pair_index"]}, with_ref=False)["i"])
            return got["c"], got["r"], idx

        # (the "cached" evaluate() reads ref log-probs from the batch; _to_device gives it zeros here)
        self.ref_table = self.ref_cache.load_or_compute(plan_batcher, logps, progress=self.progress)

    def _to_device(self, local: dict, *, with_ref: bool = True) -> dict:
        local = dict(local)
        if self.reference == "cached":
            if with_ref and self.ref_table is not None:
                idx = np.maximum(local["pair_index"], 0)
                local["ref_chosen_logps"] = self.ref_table[0][idx].astype(np.float32)
                local["ref_rejected_logps"] = self.ref_table[1][idx].astype(np.float32)
            elif "pair_weight" in local:
                local["ref_chosen_logps"] = np.zeros_like(local["pair_weight"])
                local["ref_rejected_logps"] = np.zeros_like(local["pair_weight"])
        return device_batch(local, self.mesh)

    # ---- checkpoints ---------------------------------------------------------------------------------

    def save(self, extra_meta: dict | None = None) -> None:
        """Checkpoint the state with the data-iterator state (and ``extra_meta``); a no-op if this step is saved."""
        step = int(jax.device_get(self.state.step))
        if self.checkpointer.latest_step() == step:
            return
        meta = {"data": self.batcher.state_dict(), "step": step, **(extra_meta or {})}
        self.checkpointer.save(step, self.state, meta)

    def maybe_restore(self) -> dict | None:
        """Restore the latest checkpoint in the workdir (state and data iterator); returns its meta or None."""
        if self.checkpointer.latest_step() is None:
            return None
        abstract = abstract_with_shardings(self.state, self.shardings)
        self.state, meta, step = self.checkpointer.restore(abstract)
        self.batcher.load_state_dict(meta["data"])
        log.info("resumed from step %d", step)
        return meta

    # ---- training ------------------------------------------------------------------------------------

    def _request_stop(self, signum, frame):
        log.warning("signal %d: saving a checkpoint and stopping after this step", signum)
        self._stop_requested = True

    def fit(self, num_steps: int | None = None, *, resume: bool = True, on_step: Callable | None = None) -> dict:
        """Train until ``num_steps`` (default: ``total_steps``) optimizer steps have been taken in total.

        Saves every ``config.train.save_every`` steps and at the end; SIGTERM saves and returns early
        (``status: "preempted"``); a non-finite loss raises ``FloatingPointError`` before anything is saved,
        leaving the last good checkpoint intact. Returns a summary dict.
        """
        tc = self.cfg.train
        target = self.total_steps if num_steps is None else num_steps
        if resume:
            self.maybe_restore()
        previous = signal.signal(signal.SIGTERM, self._request_stop) if _main_thread() else None
        from tqdm.auto import tqdm

        start = int(jax.device_get(self.state.step))
        bar = tqdm(total=target, initial=start, desc="train", disable=not self.progress or jax.process_index() != 0,
                   dynamic_ncols=True)
        it = iter(self.batcher)
        status, last = "done", {}
        save_every = tc.get("save_every", 0)
        log_every = max(1, tc.get("log_every", 1))
        eval_every = tc.get("eval_every", 0)
        try:
            while int(jax.device_get(self.state.step)) < target:
                t0 = time.perf_counter()
                acc = self.step_fns.zero(self.state.params)
                tokens = 0
                for _ in range(self.grad_accum):
                    local = next(it)
                    tokens += int(local["attention_mask"].sum()) * jax.process_count()
                    acc = self.step_fns.accumulate(self.state.params, self.ref_params, acc, self._to_device(local))
                self.state, metrics = self.step_fns.apply(self.state, acc)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                step = int(jax.device_get(self.state.step))
                if not np.isfinite(metrics["loss"]):
                    good = self.checkpointer.latest_step()
                    raise FloatingPointError(
                        f"non-finite loss ({metrics['loss']}) at step {step}; stopped without saving. The last good "
                        f"checkpoint ({'step ' + str(good) if good is not None else 'none'}) in "
                        f"{self.checkpointer.directory} is intact. Lower config.train.learning_rate or check the data.")
                dt = time.perf_counter() - t0
                metrics.update({"tokens_per_s": tokens / dt, "pairs_per_s": metrics["pairs"] / dt, "step_time_s": dt})
                last = metrics
                if step % log_every == 0 or step == target:
                    self.logger.log(step, metrics)
                if eval_every and self.eval_batcher is not None and step % eval_every == 0:
                    self.logger.log(step, self.evaluate(), prefix="eval")
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
                if on_step is not None:
                    on_step(step, metrics)
                if save_every and step % save_every == 0:
                    self.save()
                if self._stop_requested:
                    status = "preempted"
                    break
            self.save()
            self.checkpointer.wait()
        finally:
            bar.close()
            self.logger.flush()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return {"status": status, "step": int(jax.device_get(self.state.step)), "last_metrics": last}

    def evaluate(self, batcher: D.PairBatcher | None = None) -> dict:
        """Weighted mean metrics (loss, reward accuracy, margins...) over one pass of ``batcher`` (default: eval)."""
        batcher = batcher or self.eval_batcher
        if batcher is None:
            return {}
        totals: dict[str, float] = {}
        weight = 0.0
        for indices in batcher.epoch_plan(0):
            sums, w, _ = self.step_fns.evaluate(self.state.params, self.ref_params, self._to_device(batcher.make_batch(indices)))
            sums = jax.device_get(sums)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            weight += float(w)
        return {k: v / max(weight, 1e-12) for k, v in totals.items()}

    def batcher_for(self, rows: D.PreferenceDataset | None = None, *, pairs: list | None = None) -> D.PairBatcher:
        """An unshuffled batcher over ``rows`` (tokenized like the train rows) or already tokenized ``pairs``:
        for :meth:`evaluate` on another split, or :meth:`pair_logps`."""
        if pairs is None:
            pairs = D.tokenize_dataset(rows, self.tokenizer, self.tok_options,
                                       skip_invalid=self.cfg.data.get("skip_invalid", False), progress=self.progress)
        return D.PairBatcher(pairs, batch_options(self.cfg, shuffle=False), pad_id=self.tokenizer.pad_id,
                             process_index=jax.process_index(), process_count=jax.process_count())

    def pair_logps(self, params, pairs: list[D.TokenizedPair], *, with_reference: bool = False):
        """Summed response log-probs ``(chosen [N], rejected [N])`` of ``pairs`` under ``params`` (placed like the
        policy's params), in the order of ``pairs``.

        ``with_reference=True`` returns ``((chosen, rejected), (ref_chosen, ref_rejected))``. With a frozen
        reference the evaluation step computes the reference's log-probs in the same pass, so they come from
        it; otherwise they come from :meth:`reference_logps`."""
        frozen = self.reference == "frozen"
        batcher = self.batcher_for(pairs=pairs)
        index = {id(p): n for n, p in enumerate(pairs)}
        got_all = {k: np.zeros(len(pairs), np.float32) for k in ("c", "r", "rc", "rr")}
        for indices in batcher.epoch_plan(0):
            local = batcher.make_batch(indices)
            _, _, out = self.step_fns.evaluate(params, self.ref_params if frozen else None,
                                               self._to_device(local, with_ref=False))
            got = host_tree({"c": out["policy_chosen"], "r": out["policy_rejected"], "rc": out["ref_chosen"],
                             "rr": out["ref_rejected"]})
            for j, i in enumerate(indices + [-1] * (len(got["c"]) - len(indices))):
                if i >= 0:
                    n = index[id(batcher.pairs[i])]
                    for k in got_all:
                        got_all[k][n] = got[k][j]
        policy = got_all["c"], got_all["r"]
        if not with_reference:
            return policy
        return policy, ((got_all["rc"], got_all["rr"]) if frozen else self.reference_logps(pairs))

    def reference_logps(self, pairs: list[D.TokenizedPair] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reference log-probs ``(chosen [N], rejected [N])`` of ``pairs`` (default: the train pairs) without a
        second copy of the reference on the devices: the cached table when ``pairs`` are the train pairs, else
        a pass with the placed reference (:meth:`_placed_reference`)."""
        pairs = self.pairs if pairs is None else pairs
        if self.reference == "cached" and pairs is self.pairs and self.ref_table is not None:
            return self.ref_table[0].astype(np.float32), self.ref_table[1].astype(np.float32)
        return self.pair_logps(self._placed_reference(), pairs)

    def _placed_reference(self):
        """The reference params placed like the policy's: the frozen copy the steps use, or (cached / none
        mode) a fresh placement of the reference source, made once and kept."""
        if self.ref_params is not None:
            return self.ref_params
        if self._ref_placed_on_demand is None:
            self._ref_placed_on_demand = jax.device_put(self._ref_source, self.shardings.params)
        return self._ref_placed_on_demand

    def maybe_export(self, summary: dict) -> dict:
        """``{"hf_export": path}`` after a finished :meth:`fit` when ``config.export.hf`` (default on), else ``{}``."""
        if summary.get("status") == "done" and self.cfg.get("export", {}).get("hf", True):
            return {"hf_export": self.export_hf()}
        return {}

    def export_hf(self, out_dir: str | None = None) -> str | None:
        """Write the current policy as a HF directory (process 0); returns the path there, None elsewhere."""
        out_dir = out_dir or os.path.join(self.workdir, "hf_export")
        params = host_tree(self.state.params)
        if jax.process_index() != 0:
            return None
        M.save_pretrained(self.model, params, out_dir)
        return out_dir

    def close(self) -> None:
        self.checkpointer.close()
        self.logger.close()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
