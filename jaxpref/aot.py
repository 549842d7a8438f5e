"""Compile every program of a run for a TPU topology that is not attached, and report per-chip memory.

    python -m jaxpref.aot --config=configs/ropo_mistral.py --topology=v5e:4x4 [--config.train.pairs_per_batch=16 ...]

Needs libtpu's compiler (``pip install -e '.[aot]'``); runs on a CPU-only host. The run is built from the
config with abstract shapes only -- the model architecture from ``model.hf_dir``'s ``config.json`` when that
directory exists here, else from ``model.preset`` (the 7B recipes name theirs); no weights, tokenizer or data
files are read. Shapes come from the config: the largest bucket, the micro-batch, the sampler's batch and
``max_new_tokens``. Compiled, per algorithm:

* every algorithm: the policy's ``accumulate`` (forward + backward of one micro-batch, with the frozen
  reference's forward when ``reference.mode = "frozen"``), ``apply`` (the optimizer update) and ``evaluate``
  (a forward pass: evaluation, ROPO's w-step scoring, the reference-cache pass);
* ROPO and APO: the KV-cache sampler at the config's ``max_new_tokens`` and ``train.sample_batch_size``
  (rejection sampling / policy samples);
* APO and ``reward_model``: the reward model's three programs (its own optimizer and batch settings).

It prints one table per topology: per-chip arguments, temporaries, outputs, their total against the chip's
usable HBM, whether it fits, the per-chip FLOPs XLA counts, XLA's own run-time estimate and the MFU that estimate
implies (an *estimate* of XLA's cost model, not a measurement; the TPU cost model gives none for programs with
loops, and counts a loop body once), and for the ``accumulate`` programs the model FLOPs per chip counted from the
architecture (:func:`model_flops`) with their time at 100% of the chip's bf16 peak -- a lower bound on the step
time, not an estimate of it. Exit status 0 when everything fits; otherwise one
``error:`` line per topology naming the first program that does not fit, the GiB it needs against the GiB
available, and the knobs that would help (exit 1). A bad config or topology is one ``error:`` line (exit 2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import types

import jax
import jax.numpy as jnp

from jaxpref.errors import UserError

log = logging.getLogger(__name__)


def aot_config(cfg):
    """``cfg`` with ``model.hf_dir`` cleared when that directory is not on this host (the architecture then comes
    from ``model.preset``), and the run's checks that need files skipped."""
    cfg = cfg.copy_and_resolve_references()
    if cfg.model.hf_dir and not os.path.isdir(cfg.model.hf_dir):
        if not cfg.model.preset:
            raise UserError(f"config.model.hf_dir={cfg.model.hf_dir!r} is not on this host; set "
                            "--config.model.preset to the architecture to compile for (e.g. mistral_7b_v01).")
        cfg.model.hf_dir = ""
    return cfg


def _placeholder_tokenizer(vocab_size: int):
    """Batching needs only the pad id; no tokenizer files are read for compiling."""
    return types.SimpleNamespace(pad_id=0, bos_id=1, eos_id=2, vocab_size=vocab_size)


def _abstract_state(runtime, tx):
    from jaxpref.train.state import TrainState

    shardings = runtime.state_shardings(tx)
    shapes = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.PRNGKey(0)), runtime.abstract_params())
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _pair_loss(cfg, which: str):
    from jaxpref.train.step import dpo_pair_loss

    if which == "reward_model":
        from jaxpref.algorithms.reward_model import rm_pair_loss

        return rm_pair_loss(cfg.reward_model, cfg.apo.form)
    if cfg.algorithm == "ropo":
        from jaxpref.algorithms.ropo import ropo_pair_loss

        return ropo_pair_loss(cfg.ropo, cfg.loss.beta)
    if cfg.algorithm == "apo":
        from jaxpref.algorithms.apo import policy_pair_loss

        return policy_pair_loss(cfg)
    return dpo_pair_loss(cfg.loss)


def model_flops(cfg, mc, *, reference: str, lora: bool, rows: int, length: int, reward_head: bool = False) -> float:
    """Model FLOPs of one ``accumulate`` call (the whole micro-batch, all chips), counted from the architecture:

        matmul params   N = L * (attention + MLP projections) + (V * d unless a reward head)
        attention       A = 4 * L * S * d per token (QK^T and AV, full S x S, as PaLM's MFU counts it)
        training        (6 N + 3 A) * T   full fine-tuning   (forward 2, backward 4 per param per token)
                        (4 N + 3 A) * T   LoRA               (no weight gradient for the frozen base)
        reference       (2 N + A) * T     a frozen reference's forward in the same step

    with ``T = rows * S`` tokens (the largest bucket; the compiled program runs on padded shapes, so these are the
    FLOPs the chips must execute for the shapes compiled, not only the real tokens). Rematerialisation is not
    counted (it is hardware work, not model work), so ``model_flops / peak`` is a lower bound on the time."""
    d, L = mc.hidden_size, mc.num_hidden_layers
    heads, kv = mc.num_attention_heads, mc.num_key_value_heads or mc.num_attention_heads
    hd = mc.head_dim or d // heads
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * mc.intermediate_size
    n = L * per_layer + (0 if reward_head else mc.vocab_size * d)
    attention = 4 * L * length * heads * hd
    tokens = rows * length
    total = ((4 if lora else 6) * n + 3 * attention) * tokens
    if reference == "frozen":
        total += (2 * n + attention) * tokens
    return float(total)


def lowered_programs(cfg, devices) -> list[tuple[str, object, float | None]]:
    """``[(name, jax.stages.Lowered, model FLOPs per device or None)]`` of every program ``cfg``'s algorithm runs,
    over ``devices`` (model FLOPs, :func:`model_flops`, for the ``accumulate`` programs)."""
    from jaxpref import sharding as S
    from jaxpref.train.runtime import Runtime, model_config

    mc = model_config(cfg)
    policy = Runtime.build(cfg, devices=devices, tokenizer=_placeholder_tokenizer(mc.vocab_size))
    runtimes = []
    if cfg.algorithm != "reward_model":
        reference = "none" if cfg.loss.reference_free else cfg.reference.mode
        runtimes.append(("policy", policy, reference))
    if cfg.algorithm in ("apo", "reward_model"):
        runtimes.append(("reward_model", policy.reward_model(), "none"))
    out = []
    for which, runtime, reference in runtimes:
        tx, schedule = runtime.optimizer(total_steps=1000)
        steps = runtime.steps(_pair_loss(cfg, which), tx, schedule, reference=reference)
        batch = runtime.abstract_batch()
        lowered = steps.lower(_abstract_state(runtime, tx), batch)
        prefix = "" if which == "policy" else "rm "
        rows, length = batch.input_ids.shape
        flops = model_flops(cfg, mc, reference=reference, lora=runtime.lora.enabled, rows=rows, length=length,
                            reward_head=which == "reward_model") / len(devices)
        out += [(f"{prefix}{name}", lowered[name], flops if name == "accumulate" else None)
                for name in ("accumulate", "apply", "evaluate")]
    sampler = {"ropo": cfg.ropo, "apo": cfg.apo}.get(cfg.algorithm)
    if sampler is not None:
        out.append(("sampler", _lower_sampler(policy, cfg, sampler.max_new_tokens, S), None))
    return out


def _lower_sampler(runtime, cfg, max_new_tokens: int, S):
    """The KV-cache sampler over the runtime's sharded params, at the prompt batch the algorithms use."""
    from jaxpref.models.generate import _generate

    shards = runtime.mesh.shape["data"] * runtime.mesh.shape["fsdp"]
    batch = max(shards, cfg.train.sample_batch_size - cfg.train.sample_batch_size % shards)  # as sample_responses
    prompts = jax.ShapeDtypeStruct((batch, cfg.data.max_prompt_length), jnp.int32,
                                   sharding=S.batch_sharding(runtime.mesh, 2))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=S.replicated(runtime.mesh))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=S.replicated(runtime.mesh))
    params = runtime.abstract_model_params()  # the full model (merged when LoRA); outside the rules context
    with S.activation_rules(runtime.mesh):
        return _generate.lower(params, prompts, prompts, rng, scalar, scalar, model=runtime.model,
                               max_new_tokens=int(max_new_tokens), greedy=False, top_k=0, eos_ids=(2,), pad_id=0)


def compile_all(cfg, topology: str, *, programs=None, progress: bool = True):
    """Compile every program of ``cfg`` (or those named in ``programs``) for ``topology``: a list of
    :class:`jaxpref.aot_support.ProgramReport`."""
    from jaxpref import aot_support as A

    devices = A.topology_devices(topology)
    hbm = A.usable_hbm_bytes(devices)
    reports = []
    lowered_all = lowered_programs(cfg, devices)
    if programs:
        unknown = set(programs) - {name for name, _, _ in lowered_all}
        if unknown:
            raise UserError(f"--programs: {sorted(unknown)} are not programs of {cfg.algorithm}; it has "
                            f"{[name for name, _, _ in lowered_all]}.")
        lowered_all = [p for p in lowered_all if p[0] in programs]
    for name, lowered, flops in lowered_all:
        if progress:
            print(f"[{topology}] compiling {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 -- the compiler's OOM is a report, anything else propagates
            if not A.is_out_of_memory(e):
                raise
            reports.append(A.refused_report(name, e, time.perf_counter() - start, devices, hbm=hbm))
            continue
        report = A.program_report(name, compiled, time.perf_counter() - start, devices, hbm=hbm)
        if name == "sampler":  # XLA costs the decode loop's body once: its time estimate is one token's, not a call's
            report = dataclasses.replace(report, optimal_seconds=None)
        reports.append(dataclasses.replace(report, model_flops=flops))
    return reports


def knobs(cfg, program: str = "accumulate") -> list[str]:
    """What would lower ``program``'s per-chip memory, in the order to try it."""
    if program == "sampler":
        return [f"fewer sequences per sampler call (--config.train.sample_batch_size="
                f"{max(1, cfg.train.sample_batch_size // 4)})", "fewer max_new_tokens or a shorter max_prompt_length",
                "more chips"]
    out = []
    if cfg.train.pairs_per_batch > 1:
        out.append(f"a smaller micro-batch (--config.train.pairs_per_batch={max(1, cfg.train.pairs_per_batch // 2)} "
                   f"with --config.train.grad_accum_steps={cfg.train.grad_accum_steps * 2})")
    if cfg.model.remat_policy != "full":
        out.append("--config.model.remat_policy=full")
    if cfg.reference.mode == "frozen" and cfg.algorithm in ("dpo", "reward_conditioned"):
        out.append("--config.reference.mode=cached (no reference forward in the step)")
    out.append("shorter sequences (config.data.buckets / max_length)")
    out.append("more chips, or tensor parallelism (--config.mesh.tensor=2)")
    return out


def main(argv=None) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=False)
    topologies = flags.DEFINE_list("topology", ["v5e:2x2"], "TPU topologies, e.g. v5e:4x4,v4:2x2x4,v5p:2x2x2")
    programs = flags.DEFINE_list("programs", None, "compile only these programs (e.g. accumulate,sampler)")
    quiet = flags.DEFINE_bool("quiet", False, "no progress lines")

    def _main(_):
        from jaxpref import aot_support as A
        from jaxpref.configs_base import validate

        logging.getLogger("jaxpref").setLevel(logging.WARNING)
        try:
            cfg = config.value
            if cfg is None:
                raise UserError("pass --config=configs/NAME.py")
            validate(cfg)
            cfg = aot_config(cfg)
            failures = []
            for topology in topologies.value:
                reports = compile_all(cfg, topology, programs=programs.value, progress=not quiet.value)
                print(f"\n{cfg.algorithm} on {topology} ({len(reports)} programs; per chip; est. time and MFU are XLA "
                      "cost-model estimates, not measurements; time at peak = model flops / bf16 peak, a lower bound)")
                print(A.format_table(reports))
                bad = [r for r in reports if r.fits is False]
                if bad:
                    failures.append(A.does_not_fit_message(bad[0], knobs(cfg, bad[0].name), topology=topology))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        for line in failures:
            print(line, file=sys.stderr)
        sys.exit(1 if failures else 0)

    from jaxpref.cli import parse_flags

    app.run(_main, argv=argv or sys.argv, flags_parser=parse_flags)
    return 0


if __name__ == "__main__":
    main()
