"""Where a jaxpref DPO step goes on CPU: host batching, the accumulate program (by XLA op kind), the optimizer.

    python bench/profile_dpo_step.py [--pairs 160] [--threads 2] [--lora]

The same run as ``bench/dpo_vs_trl.py`` (model, pairs, buckets, 8 pairs per step). After one epoch that
compiles every shape, a second epoch is timed piece by piece with ``block_until_ready`` between the pieces:

* host: building the micro-batch on the host (``PairBatcher.make_batch``) and placing it on the device;
* accumulate: the forward + backward program (policy and reference forward, loss, gradients);
* apply: the AdamW update.

It also reports the padding: the share of token slots (rows x bucket length) and of LM-head slots (response
positions) that hold no real token. Then ``jax.profiler`` traces a few accumulate calls of the most common
shape and sums the time of XLA's CPU ops by the part of the model they belong to (the flax module path in
XLA's metadata: attention, MLP, RMSNorm, embedding, the vocabulary-chunked LM head, loss/residuals) and by
kind (matmuls -- dots and library-matmul fusions -- vs elementwise/reduction fusions and copies). Shares,
not absolute times, are the robust output on a shared machine; ops XLA runs outside named instructions are
not counted.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _op_kinds(hlo_text: str) -> dict[str, str]:
    """``{instruction name: kind}`` for the instructions of ``hlo_text``: ``matmul`` for dots, oneDNN/XNNPACK
    matmul calls and fusions whose body holds a dot, ``elementwise/reduce`` for other fusions, else the opcode;
    prefixed ``LM head`` when XLA's metadata places the op in the vocabulary-chunked log-softmax loop (the only
    ``while`` of the program)."""
    fused_with_dot = set()
    computation = None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            computation = m.group(1)
            continue
        if computation and (" dot(" in line or "matmul" in line):
            fused_with_dot.add(computation)
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*? (\w[\w\-]*)\(", line)
        if not m:
            continue
        name, op = m.groups()
        if op in ("dot", "convolution") or "matmul" in line:
            kind = "matmul"
        elif op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line)
            kind = "matmul" if called and called.group(1) in fused_with_dot else "elementwise/reduce"
        else:
            kind = op
        kinds[name] = f"{_where(line)}: {kind}"
    return kinds


def _where(line: str) -> str:
    """The part of the model an instruction belongs to, from the flax module path in XLA's metadata."""
    op_name = re.search(r'op_name="([^"]*)"', line)
    path = op_name.group(1) if op_name else ""
    if "/while/body/" in path:
        return "LM head (chunked log-softmax)"
    for key, label in (("self_attn", "attention"), ("mlp", "MLP"), ("norm", "RMSNorm"), ("embed", "embedding")):
        if key in path:
            return label
    return "loss, residuals, other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--trace_calls", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from dpo_vs_trl import bench_trainer

    trainer, _ = bench_trainer(args.pairs, args.lora)
    fns, state = trainer.step_fns, trainer.state
    plan = trainer.batcher.epoch_plan(0)

    def one_epoch(record):
        nonlocal state
        for ix in plan:
            t0 = time.perf_counter()
            batch = trainer._to_device(trainer.batcher.make_batch(ix))
            jax.block_until_ready(batch)
            t1 = time.perf_counter()
            acc = fns.accumulate(state.params, trainer.ref_params, fns.zero(state.params), batch)
            jax.block_until_ready(acc)
            t2 = time.perf_counter()
            state, _ = fns.apply(state, acc)
            jax.block_until_ready(state)
            t3 = time.perf_counter()
            record.append((batch.input_ids.shape, t1 - t0, t2 - t1, t3 - t2))

    warm = []
    one_epoch(warm)  # compiles every shape
    timed = []
    one_epoch(timed)
    host, accumulate, apply = (sum(r[i] for r in timed) for i in (1, 2, 3))
    total = host + accumulate + apply
    print(f"{len(timed)} steps, {total / len(timed):.2f} s/step (timed epoch, compiled): host batching "
          f"{100 * host / total:.1f}%, accumulate {100 * accumulate / total:.1f}%, apply {100 * apply / total:.1f}%")
    batches = [trainer.batcher.make_batch(ix) for ix in plan]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    slots = sum(b["attention_mask"].size for b in batches)
    scored = sum(int(b["score_mask"].sum()) for b in batches)
    head_slots = sum(b["score_mask"].size for b in batches)
    print(f"padding: {100 * (1 - real / slots):.1f}% of token slots (real {real} of {slots}); the LM head runs on "
          f"{head_slots} response slots, {100 * (1 - scored / head_slots):.1f}% of them padding")
    by_shape = collections.defaultdict(list)
    for shape, _, acc_s, _ in timed:
        by_shape[shape].append(acc_s)
    for shape, ts in sorted(by_shape.items()):
        print(f"  accumulate on {shape}: {len(ts)} steps, median {statistics.median(ts):.2f} s")

    if args.trace_calls == 0:
        return
    def shape(b):  # (token rows x length, score groups x width): one compiled program
        return b["input_ids"].shape, b["score_index"].shape

    common = collections.Counter(shape(b) for b in batches).most_common(1)[0][0]
    batch = trainer._to_device(next(b for b in batches if shape(b) == common))
    zero = fns.zero(state.params)
    kinds = _op_kinds(fns._accumulate.lower(state.params, trainer.ref_params, zero, batch).compile().as_text())
    trace_dir = tempfile.mkdtemp(prefix="jaxpref_profile_")
    with jax.profiler.trace(trace_dir):
        for _ in range(args.trace_calls):
            jax.block_until_ready(fns.accumulate(state.params, trainer.ref_params, fns.zero(state.params), batch))
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    events = json.load(gzip.open(files[0]))["traceEvents"]
    per_kind, per_name = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "")
        kind = kinds.get(name)
        if kind is None or kind.endswith(": while"):  # a loop's event spans its body's events: not counted twice
            continue
        per_kind[kind] += e["dur"]
        per_name[name] += e["dur"]
    op_total = sum(per_kind.values())
    print(f"\naccumulate on the most common shape, tokens {tuple(batch.input_ids.shape)}, response positions "
          f"{tuple(batch.score_index.shape)}, x {args.trace_calls} calls, XLA CPU op time by kind "
          f"({op_total / 1e6 / args.trace_calls:.2f} s of ops per call; ops on both threads summed):")
    for kind, us in per_kind.most_common(16):
        print(f"  {kind:48} {100 * us / op_total:5.1f}%")
    print("top ops:")
    for name, us in per_name.most_common(12):
        print(f"  {name:32} {kinds[name]:48} {100 * us / op_total:5.1f}%")


if __name__ == "__main__":
    main()
