"""A training session: one model trained on one set of pairs, over a :class:`~jaxpref.train.runtime.Runtime`.

The runtime (mesh, model definition, tokenizer, shardings) is built once per run; a :class:`Trainer` adds
what one training phase needs -- the tokenized pairs and their batcher, the optimizer and train state,
the reference policy (frozen copy, cached table, or none), checkpoints and metrics in ``workdir`` -- and
trains with :func:`jaxpref.train.loop.fit`. DPO uses one; ROPO one per round; APO one per phase and
model. Pair weights and groups (ROPO's w-step, APO's RM terms) are explicit arguments, aligned with the
rows, never fields of the data.

With LoRA (``config.lora.rank > 0``) the session's ``params`` are the frozen base (placed once; pass
:meth:`Runtime.share_base`'s arrays to share them between sessions), the train state holds the adapters (and a
reward model's head), the reference is the base with the adapters off, and checkpoints hold only what trains.
:meth:`Trainer.merged_params` gives the plain model params (sampling, task evaluation, export).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Callable, Sequence

import jax
import numpy as np

from jaxpref import data as D
from jaxpref import paths
from jaxpref.errors import ConfigError
from jaxpref.train import loop, refcache
from jaxpref.train.checkpoint import Checkpointer, abstract_with_shardings
from jaxpref.train.logging import MetricLogger
from jaxpref.train.runtime import Runtime, host_tree, tokenizer_path
from jaxpref.train.state import create_sharded_state
from jaxpref.train.step import Batch, PairLoss, StepFns, device_batch, dpo_pair_loss

log = logging.getLogger(__name__)


def with_weights(pairs: list[D.TokenizedPair], weights: Sequence[float] | None = None,
                 groups: Sequence[int] | None = None) -> list[D.TokenizedPair]:
    """``pairs`` with per-pair ``weight``/``group`` taken from arrays aligned with the *source rows*
    (``pair.index`` is the row's position), so rows dropped by tokenization keep the alignment."""
    if weights is None and groups is None:
        return pairs
    return D.TokenizedPairs([dataclasses.replace(p, weight=float(weights[p.index]) if weights is not None else p.weight,
                                                 group=int(groups[p.index]) if groups is not None else p.group)
                             for p in pairs], getattr(pairs, "report", None))


class Trainer:
    """Trains on ``rows`` with a pairwise loss, over ``runtime``.

    Args:
      runtime: the run's :class:`Runtime` (policy or reward model).
      workdir: checkpoints/, metrics.jsonl, tensorboard/, hf_export/ (and hf_adapter/) go here.
      rows: the train rows (a :class:`~jaxpref.data.PreferenceDataset` or list of row dicts).
      params: the model's weights (host or device arrays): the starting point and default reference; with LoRA
        the frozen base (also the reference, adapters off), kept as given when already placed.
      trainable: the train state's params to start from instead (``host_tree(trainer.state.params)`` of an
        earlier session: the policy so far without LoRA, its adapters (+ head) with LoRA); default ``params``
        (without LoRA) or fresh adapters (``B = 0``: the model starts as the base).
      pair_loss: defaults to :func:`jaxpref.train.step.dpo_pair_loss` of ``config.loss``.
      weights, groups: per-row pair weights / groups (see :class:`~jaxpref.train.step.Batch`); default 1 / 0.
      reference_params: the reference policy when it is not ``params`` (full fine-tuning only; with LoRA the
        reference is always the base with adapters off).
      reference: ``"frozen"``, ``"cached"`` or ``"none"`` (default ``config.reference.mode``; ``"none"`` for
        reference-free losses and reward models).
      eval_rows: held-out rows for :meth:`evaluate`.
      train_cfg: a train section replacing the runtime's (e.g. APO's per-round learning rate).
      label: the progress bar's name (e.g. ``"APO round 2/3 · reward model"``).
    """

    def __init__(self, runtime: Runtime, workdir: str, rows, *, params, trainable=None,
                 pair_loss: PairLoss | None = None, weights=None, groups=None, reference_params=None,
                 reference: str | None = None, eval_rows=None, train_cfg=None, label: str = "train",
                 progress: bool = True):
        self.runtime, self.cfg, self.workdir, self.progress, self.label = runtime, runtime.cfg, workdir, progress, label
        self.mesh, self.model, self.tokenizer, self.tok_options = (runtime.mesh, runtime.model, runtime.tokenizer,
                                                                   runtime.tok_options)
        self.train_cfg = train_cfg or runtime.train_cfg
        self.lora = runtime.lora.enabled
        if self.lora and reference_params is not None and reference_params is not params:
            raise ValueError("with LoRA the reference is the base (params) with the adapters off; do not pass "
                             "another reference_params.")
        paths.makedirs(workdir)
        self.rows, self.eval_rows = rows, eval_rows
        self.pairs = with_weights(runtime.tokenize(rows, progress=progress), weights, groups)
        log.info("%s: %s", label, self.pairs.report.summary())
        self.batcher = runtime.batcher(self.pairs)
        self.eval_batcher = self.batcher_for(eval_rows) if eval_rows is not None else None
        tc = self.train_cfg
        self.grad_accum = tc.grad_accum_steps
        self.total_steps = int(tc.num_steps or math.ceil(tc.num_epochs * self.batcher.batches_per_epoch / self.grad_accum))
        self.tx, self.schedule = runtime.optimizer(self.total_steps, tc)
        self.shardings = runtime.state_shardings(self.tx)
        mode = reference or ("none" if runtime.scorer is not None else self.cfg.reference.mode)
        if self.cfg.loss.reference_free:
            mode = "none"
        self.reference = mode
        self.step_fns = runtime.steps(pair_loss or dpo_pair_loss(self.cfg.loss), self.tx, self.schedule, reference=mode)
        # ref_params: the steps' second argument -- the frozen reference copy (full fine-tuning, "frozen"), the
        # frozen base (LoRA, whatever the mode), or None.
        self.ref_params = self.ref_table = self.ref_cache = self.base = None
        self._eval_ref_tables: dict[int, tuple[D.PairBatcher, tuple[np.ndarray, np.ndarray]]] = {}
        self._last_metrics: dict = {}
        if self.lora:
            weights_full = runtime.place(params, copy=False)
            self.base = self.ref_params = runtime.frozen_part(weights_full)
            start = runtime.initial_trainable(weights_full) if trainable is None else trainable
            ref_source = self.base
        else:
            start = params if trainable is None else trainable
            ref_source = params if reference_params is None else reference_params
        self.state = create_sharded_state(start, self.tx, jax.random.PRNGKey(self.cfg.seed), self.shardings)
        self._ref_source, self._ref_placed_on_demand = ref_source, None
        if mode == "frozen" and not self.lora:
            self.ref_params = runtime.place(ref_source)
        elif mode == "cached":
            self._prepare_reference_cache(ref_source)
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_checkpoints,
                                         async_save=tc.async_checkpointing)
        self.logger = MetricLogger(workdir)
        counts = runtime.param_counts()
        log.info("%s: trainable %s of %s params (%.1f%%)", label, _human(counts["trainable_params"]),
                 _human(counts["total_params"]), 100.0 * counts["trainable_params"] / max(counts["total_params"], 1))

    # ---- the trained model ---------------------------------------------------------------------------

    def merged_params(self):
        """The trained model as plain params (``model.apply``, sampling, task evaluation, HF export): the state's
        params without LoRA; with LoRA the base with the adapters merged in (new memory for the adapted kernels
        only) and the trained head."""
        return self.runtime.merge(self.base, self.state.params)

    # ---- reference log-probs -------------------------------------------------------------------------

    def _prepare_reference_cache(self, ref_source) -> None:
        placed = self._placed_reference()
        settings = dict(self.tok_options.__dict__, buckets=list(self.batcher.buckets), packing=self.batcher.options.packing)
        key = refcache.fingerprint(refcache.params_digest(ref_source), self.pairs, tokenizer_path(self.cfg), settings)
        cache_dir = self.cfg.reference.cache_dir or os.path.join(self.workdir, "ref_cache")
        self.ref_cache = refcache.ReferenceCache(cache_dir, key, len(self.pairs))
        plan_batcher = self.runtime.batcher(self.pairs, shuffle=False)

        def logps(local):
            batch = self._to_device(local, with_ref=False)
            chosen, rejected = self.step_fns.score(placed, batch)  # the plain model: LoRA's adapters are off
            got = host_tree({"c": chosen, "r": rejected, "i": batch.index})
            return got["c"], got["r"], got["i"]

        self.ref_table = self.ref_cache.load_or_compute(plan_batcher, logps, progress=self.progress)

    def _to_device(self, local: dict, *, with_ref: bool = True, table=None) -> Batch:
        """A host batch on the mesh; with a cached reference, its log-probs from ``table`` (indexed by the batch's
        ``pair_index``; default the train pairs' table)."""
        ref_c = ref_r = None
        table = self.ref_table if table is None else table
        if self.reference == "cached" and with_ref and table is not None:
            idx = np.maximum(local["pair_index"], 0)
            ref_c, ref_r = table[0][idx], table[1][idx]
        return device_batch(Batch.from_host(local, ref_c, ref_r), self.mesh)

    # ---- checkpoints ---------------------------------------------------------------------------------

    def save(self, extra_meta: dict | None = None) -> None:
        """Checkpoint the state with the data-iterator state (and ``extra_meta``); a no-op if this step is saved."""
        step = int(jax.device_get(self.state.step))
        if self.checkpointer.latest_step() == step:
            return
        meta = {"data": self.batcher.state_dict(), "step": step, "last_metrics": self._last_metrics,
                **(extra_meta or {})}
        self.checkpointer.save(step, self.state, meta)

    def maybe_restore(self) -> dict | None:
        """Restore the latest readable checkpoint in the workdir (state and data iterator); returns its meta or None.

        A checkpoint that cannot be read (a truncated or missing array file) is skipped with one warning naming
        it and the step used instead; one whose arrays do not fit this run (another model or optimizer) is a
        :class:`~jaxpref.errors.ConfigError`."""
        steps = sorted(self.checkpointer.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = abstract_with_shardings(self.state, self.shardings)
        for n, step in enumerate(steps):
            try:
                self.state, meta, step = self.checkpointer.restore(abstract, step=step)
            except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types for damaged files
                if _is_structure_mismatch(e):
                    raise ConfigError(f"the checkpoint of step {step} in {self.checkpointer.directory} does not fit "
                                      f"this run (another model, LoRA or optimizer setting: {_first_line(e)}); use a "
                                      "new --workdir.") from None
                fallback = steps[n + 1] if n + 1 < len(steps) else None
                log.warning("%s: checkpoint %d in %s is unreadable (%s); %s", self.label, step,
                            self.checkpointer.directory, _first_line(e),
                            f"using step {fallback} instead" if fallback is not None else "starting from scratch")
                continue
            self.batcher.load_state_dict(meta["data"])
            self._last_metrics = dict(meta.get("last_metrics") or {})
            self.logger.truncate_after(step)
            log.info("%s: resumed from step %d of %d (%s)", self.label, step, self.total_steps, self.workdir)
            return meta
        return None

    # ---- training ------------------------------------------------------------------------------------

    def fit(self, num_steps: int | None = None, *, resume: bool = True, on_step: Callable | None = None):
        """Train until ``num_steps`` (default: ``total_steps``) optimizer steps have been taken in total.

        Saves every ``save_every`` steps and at the end; a SIGTERM/SIGINT saves and returns
        ``status="preempted"``; a non-finite loss raises ``FloatingPointError`` (see :func:`loop.fit`).
        ``on_step(step, metrics)`` runs after every step. Returns a :class:`~jaxpref.train.loop.FitResult`.
        """
        tc = self.train_cfg
        target = self.total_steps if num_steps is None else num_steps
        if resume:
            self.maybe_restore()

        def batches():
            for local in self.batcher:
                yield self._to_device(local)

        def save(state, step):
            self.state = state
            self.save()

        def discard(step):
            self.checkpointer.delete(step)

        def evaluate(state, step):
            self.state = state
            if self.eval_batcher is not None:
                self.logger.log(step, self.evaluate(), prefix="eval")

        def hook(step, metrics, state):
            self.state = state
            self._last_metrics = dict(metrics)
            if on_step is not None:
                on_step(step, metrics)
            return self.state

        hooks = loop.Hooks(save=save, last_saved=self.checkpointer.latest_step, discard=discard,
                           log=self.logger.log, evaluate=evaluate, on_step=hook)
        try:
            steps = _DropoutKeys(self.step_fns, self) if self.step_fns.dropout else self.step_fns
            self.state, result = loop.fit(
                steps, self.state, batches(), target=target, ref_params=self.ref_params,
                grad_accum=self.grad_accum, save_every=tc.save_every, log_every=tc.log_every,
                eval_every=tc.eval_every, hooks=hooks, progress=self.progress, label=self.label,
                checkpoint_dir=self.checkpointer.directory)
            self.checkpointer.wait()
        finally:
            self.logger.flush()
        if not result.last_metrics:  # nothing left to train (a finished run re-run): the saved step's metrics
            result.last_metrics = dict(self._last_metrics)
        return result

    def evaluate(self, batcher: D.PairBatcher | None = None) -> dict:
        """Weighted mean metrics (loss, reward accuracy, margins...) over one pass of ``batcher`` (default: eval)."""
        batcher = batcher or self.eval_batcher
        if batcher is None:
            return {}
        table = None
        if self.reference == "cached" and batcher is not self.batcher:
            # the cached table holds the *train* pairs' reference log-probs: other pairs get their own pass
            key = id(batcher)
            # the batcher is kept with its table: a temporary batcher's id may be reused by a later one
            if key not in self._eval_ref_tables or self._eval_ref_tables[key][0] is not batcher:
                self._eval_ref_tables[key] = (batcher, self.reference_logps(batcher.pairs))
            table = self._eval_ref_tables[key][1]
        totals: dict[str, float] = {}
        weight = 0.0
        for indices in batcher.epoch_plan(0):
            sums, w, _ = self.step_fns.evaluate(self.state.params, self.ref_params,
                                                self._to_device(batcher.make_batch(indices), table=table))
            sums = jax.device_get(sums)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            weight += float(w)
        return {k: v / max(weight, 1e-12) for k, v in totals.items()}

    def batcher_for(self, rows=None, *, pairs: list | None = None) -> D.PairBatcher:
        """An unshuffled batcher over ``rows`` (tokenized like the train rows) or already tokenized ``pairs``:
        for :meth:`evaluate` on another split, or :meth:`pair_logps`."""
        if pairs is None:
            pairs = self.runtime.tokenize(rows, progress=self.progress)
        return self.runtime.batcher(pairs, shuffle=False)

    def pair_logps(self, params, pairs: list[D.TokenizedPair], *, with_reference: bool = False):
        """Summed response log-probs ``(chosen [N], rejected [N])`` of ``pairs`` under ``params`` -- train-state
        params (the policy's, or under LoRA a trainable tree), placed like the state's -- in the order of
        ``pairs`` (for a reward model: the rewards).

        ``with_reference=True`` returns ``((chosen, rejected), (ref_chosen, ref_rejected))``. With a frozen
        reference the evaluation step computes the reference's log-probs in the same pass, so they come from
        it; otherwise they come from :meth:`reference_logps`."""
        frozen = self.reference == "frozen"

        def run(batch):
            _, _, out = self.step_fns.evaluate(params, self.ref_params, batch)
            return {"c": out["policy_chosen"], "r": out["policy_rejected"], "rc": out["ref_chosen"],
                    "rr": out["ref_rejected"]}

        got = self._per_pair(pairs, run)
        policy = got["c"], got["r"]
        if not with_reference:
            return policy
        return policy, ((got["rc"], got["rr"]) if frozen else self.reference_logps(pairs))

    def reference_logps(self, pairs: list[D.TokenizedPair] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reference log-probs ``(chosen [N], rejected [N])`` of ``pairs`` (default: the train pairs) without a
        second copy of the reference on the devices: the cached table when ``pairs`` are the train pairs, else
        a pass of the plain model with the placed reference (LoRA: the base, adapters off)."""
        pairs = self.pairs if pairs is None else pairs
        if self.reference == "cached" and pairs is self.pairs and self.ref_table is not None:
            return self.ref_table[0].astype(np.float32), self.ref_table[1].astype(np.float32)
        weights = self._placed_reference()
        got = self._per_pair(pairs, lambda batch: dict(zip("cr", self.step_fns.score(weights, batch))))
        return got["c"], got["r"]

    def _per_pair(self, pairs: list[D.TokenizedPair], fn) -> dict[str, np.ndarray]:
        """``fn(device batch) -> {name: [P]}`` over unshuffled batches of ``pairs``, gathered into ``{name: [N]}``
        float32 arrays in the order of ``pairs``."""
        batcher = self.batcher_for(pairs=pairs)
        index = {id(p): n for n, p in enumerate(pairs)}
        out: dict[str, np.ndarray] = {}
        for indices in batcher.epoch_plan(0):
            got = host_tree(fn(self._to_device(batcher.make_batch(indices), with_ref=False)))
            for j, i in enumerate(indices):
                if i >= 0:
                    n = index[id(batcher.pairs[i])]
                    for k, v in got.items():
                        out.setdefault(k, np.zeros(len(pairs), np.float32))[n] = v[j]
        return out

    def _placed_reference(self):
        """The reference weights placed like the model's: the frozen copy the steps use, the LoRA base, or (full
        fine-tuning, cached / none mode) a placement of the reference source, made once and kept."""
        if self.ref_params is not None:
            return self.ref_params
        if self._ref_placed_on_demand is None:
            self._ref_placed_on_demand = self.runtime.place(self._ref_source)
        return self._ref_placed_on_demand

    def data_report(self) -> dict:
        """How the train rows became pairs (kept, skipped by reason, truncated), for results.json."""
        return self.pairs.report.to_dict()

    def maybe_export(self, summary) -> dict:
        """After a finished :meth:`fit` when ``config.export.hf``: ``{"hf_export": path}`` (+ ``"hf_adapter"`` for
        a LoRA policy); else ``{}``."""
        if summary["status"] == "done" and self.cfg.export.hf:
            return self.export()
        return {}

    def export(self, out_dir: str | None = None, adapter_dir: str | None = None) -> dict:
        """Write the trained model (:func:`jaxpref.train.export.export_trained`): ``hf_export/`` (merged under LoRA)
        and, for a LoRA policy, ``hf_adapter/`` in PEFT's format. Returns ``{"hf_export": path[, "hf_adapter":
        path]}`` (paths None on processes other than 0)."""
        from jaxpref.train.export import export_trained

        return export_trained(self.runtime, self.base, self.state.params,
                              out_dir or os.path.join(self.workdir, "hf_export"),
                              adapter_dir=adapter_dir or os.path.join(self.workdir, "hf_adapter"))

    def export_hf(self, out_dir: str | None = None) -> str | None:
        """Write the trained model as a HF directory (merged under LoRA; process 0); returns the path there, None
        elsewhere."""
        from jaxpref.train.export import export_hf

        return export_hf(self.runtime, self.merged_params(), out_dir or os.path.join(self.workdir, "hf_export"))

    def close(self) -> None:
        self.checkpointer.close()
        self.logger.close()


class _DropoutKeys:
    """The step functions as :func:`loop.fit` sees them when LoRA dropout is on: every optimizer step's
    accumulator starts from the key ``fold_in(state.rng, state.step)`` of the session's current state (kept in
    sync by the loop's hooks), so masks differ per step and micro-batch and a resumed run draws the same ones."""

    def __init__(self, steps: StepFns, trainer: "Trainer"):
        self._steps, self._trainer = steps, trainer

    def zero(self, params):
        state = self._trainer.state
        if state.params is not params:  # the hooks did not hand the session the loop's state
            raise RuntimeError("LoRA dropout keys: the Trainer's state is not the one being trained.")
        return self._steps.zero(params, rng=jax.random.fold_in(state.rng, state.step))

    def __getattr__(self, name):
        return getattr(self._steps, name)


def _human(n: int) -> str:
    """1234 -> "1.23K", 135_000_000 -> "135M", 7_241_732_096 -> "7.24B"."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _is_structure_mismatch(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, ValueError) and ("tree structures do not match" in text or "shape" in text.lower()
                                          and "mismatch" in text.lower())


def require_done(result, where: str) -> None:
    """Raise :class:`jaxpref.errors.Preempted` when a fit was preempted: later phases must not run on
    unfinished work (and no round/phase marker may be written for it)."""
    from jaxpref.errors import Preempted

    if result["status"] != "done":
        raise Preempted(f"preempted during {where}; re-run the same command to resume")


__all__ = ["ConfigError", "Trainer", "host_tree", "require_done", "with_weights"]
