"""Side-by-side comparisons on the gold-reward task: several variants x flip rates x seeds, one command.

    python -m jaxpref.eval.compare --spec=bench/ropo_table.py --out=results/ropo_table

A *spec* is a Python file with ``get_variants() -> dict[name, ConfigDict]`` (every variant a full
experiment config with the same ``task`` section; a variant may instead be a function ``flip_rate ->
ConfigDict``, e.g. rDPO with its assumed noise rate set to the true one) and optionally ``FLIP_RATES``,
``SEEDS``, ``METRICS`` (the columns of the table), ``TITLE`` and ``BASELINE`` (a variant name: every other
variant's per-seed paired differences against it, :func:`paired_differences`, go to ``table.md`` and
``results.json``). Per seed the SFT policy and its pairs are built once and shared
by every variant and flip rate, so differences between variants are differences between algorithms.

With ``--task_cache=DIR`` the task data of each seed is also stored there (one pickle per task section and
seed and code commit, :func:`cached_task_data`), so the parts of one comparison run as separate processes -- e.g. one per
``--variants`` subset, side by side -- build each seed's SFT policy and pairs once between them.

Each run writes ``<out>/<variant>/flip<rate>_seed<seed>/results.json``; a run whose file already exists is
read back instead of re-run, so an interrupted comparison resumes. The top-level ``results.json`` holds every
run and, per variant and flip rate, mean and std over seeds; ``table.md`` is the markdown table
(mean ± std) and ``plot.png`` one panel per metric with a line per variant.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np

from jaxpref.eval import experiment as E
from jaxpref.eval import metrics as Me
from jaxpref.tasks.gold import build_task_data, task_data_key

DEFAULT_METRICS = ("gold_reward", "win_rate", "clean_accuracy", "kl")


def load_spec(path: str):
    spec = importlib.util.spec_from_file_location("jaxpref_compare_spec", path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"comparison spec {path!r} not found.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_variants"):
        raise ValueError(f"{path}: a comparison spec needs get_variants() -> dict[name, ConfigDict].")
    return module


def cached_task_data(cfg, seed: int, cache_dir: str | None, *, code_version: str = "", progress: bool = False):
    """:func:`jaxpref.tasks.gold.build_task_data` for ``(cfg.task, seed)``, stored under ``cache_dir`` (None: no
    cache). The key hashes :func:`~jaxpref.tasks.gold.task_data_key`, the seed and ``code_version`` (the git
    commit, so data built by other code is never reused); an exclusive file lock makes a second process wait
    for the first one's build instead of repeating it. A file that cannot be read back is rebuilt."""
    if cache_dir is None:
        return build_task_data(cfg, seed, progress=progress)
    import fcntl
    import hashlib
    import pickle

    os.makedirs(cache_dir, exist_ok=True)
    key = hashlib.sha256(f"{task_data_key(cfg)}|{code_version}".encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"task_{key}_seed{seed}.pkl")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    return pickle.load(f)
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as e:
                print(f"note: rebuilding the task data of seed {seed}: {path} could not be read ({e})", flush=True)
        td = build_task_data(cfg, seed, progress=progress)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(td, f)
        os.replace(tmp, path)
        return td


def variant_config(variant, flip_rate: float):
    """A variant's config at ``flip_rate`` (a spec's variant is a ConfigDict or a function of the flip rate)."""
    return variant(flip_rate) if callable(variant) else variant


def _check_same_task(variants: dict, flip_rates=(0.0,)) -> None:
    tasks = {(name, rate): task_data_key(variant_config(v, rate)) for name, v in variants.items() for rate in flip_rates}
    if len(set(tasks.values())) > 1:
        raise ValueError("variants must share the task section that builds the SFT data (all but "
                         "jaxpref.tasks.gold.USE_ONLY_KEYS); they differ: "
                         f"{sorted({name for name, _ in tasks})}")


def stale_reason(stored: dict, cfg, *, commit: str | None) -> str | None:
    """Why a stored run's ``results.json`` cannot stand for ``cfg`` (the run's config with seed, flip rate and
    task set) at git ``commit``: it records no config, another config (the first changed keys), or another
    commit. None when it can be reused."""
    from jaxpref.configs_base import changed_keys, config_to_dict

    record = stored.get("config") or {}
    if "resolved" not in record:
        return "it records no config"
    changed = changed_keys(record["resolved"], config_to_dict(cfg))
    if changed:
        return "its config differs (" + ", ".join(f"config.{k}" for k in changed[:4]) + ")"
    if commit is not None and record.get("git_commit") != commit:
        return f"it was produced by commit {record.get('git_commit', '?')[:10]}, not {commit[:10]}"
    return None


def _run_config(cfg, seed: int, rate: float):
    """The config :func:`jaxpref.eval.experiment.run_one` runs for ``(seed, rate)``."""
    out = cfg.copy_and_resolve_references()
    out.seed, out.data.flip_rate, out.task.name = seed, rate, "gold"
    return out


def run_comparison(variants: dict, flip_rates, seeds, out_dir: str, *, progress: bool = False,
                   metrics=DEFAULT_METRICS, title: str = "", rerun_stale: bool = False,
                   any_commit: bool = False, baseline: str | None = None, tabulate_only: bool = False,
                   task_cache: str | None = None) -> dict:
    """Run every ``(variant, flip rate, seed)``; return ``{"runs": {variant: [result...]}, "summary": ...}``.

    A run whose ``results.json`` exists is reused only when it records the same resolved config and git commit
    (``any_commit`` skips the commit check); otherwise it is refused with a :class:`~jaxpref.errors.UserError`,
    or re-run from scratch with ``rerun_stale``. ``tabulate_only`` runs nothing: the tables are made from the stored
    runs there are (missing ones left out), and ``table.md`` lists every run left out or stored by another commit
    or config, with the reason. ``task_cache``: a directory for :func:`cached_task_data`."""
    import shutil

    from jaxpref.errors import UserError
    from jaxpref.pipeline import _config_record

    if baseline is not None and baseline not in variants:
        raise UserError(f"BASELINE {baseline!r} is not a variant of this spec; it has {sorted(variants)}.")
    any_cfg = variant_config(next(iter(variants.values())), flip_rates[0])
    record = _config_record(any_cfg)
    commit = None if any_commit else (record["git_commit"] or None)
    code_version = record["git_commit"] + ("+dirty" if record["git_dirty"] else "")
    _check_same_task(variants, flip_rates)
    os.makedirs(out_dir, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    notes: list[str] = []
    for seed in seeds:
        td = None
        for name, variant in variants.items():
            for rate in flip_rates:
                cfg = variant_config(variant, rate).copy_and_resolve_references()
                cfg.seed = seed
                workdir = os.path.join(out_dir, name, f"flip{rate}_seed{seed}")
                done = os.path.join(workdir, "results.json")
                r = None
                if os.path.exists(done):
                    with open(done) as f:
                        r = json.load(f)
                    reason = stale_reason(r, _run_config(cfg, seed, rate), commit=commit)
                    if reason and tabulate_only:
                        notes.append(f"{name} flip {rate} seed {seed}: used although {reason}")
                        reason = None
                    if reason and not rerun_stale:
                        raise UserError(f"{done} cannot be reused: {reason}. Pass --rerun_stale to run it again "
                                        "(or --any_commit to accept runs of other commits).")
                    if reason:
                        shutil.rmtree(workdir)
                        r = None
                if r is None and tabulate_only:
                    notes.append(f"{name} flip {rate} seed {seed}: not run")
                    continue
                if r is None:
                    if td is None:
                        td = cached_task_data(any_cfg, seed, task_cache, code_version=code_version, progress=progress)
                    r = E.run_one(cfg, td, rate, seed, workdir, progress=progress)
                r = E.with_eval_scalars(r)
                r["variant"] = name
                runs[name].append(r)
                print(f"[{name}] flip {rate} seed {seed}: " + " ".join(
                    f"{k} {r[k]:.3f}" for k in metrics if isinstance(r.get(k), (int, float))), flush=True)
    summary = {name: E.aggregate(rs) for name, rs in runs.items()}
    per_round = {name: aggregate_rounds(rs) for name, rs in runs.items()}
    per_round = {k: v for k, v in per_round.items() if v}
    paired = paired_differences(runs, baseline, metrics) if baseline else {}
    notes += unpaired_task_data(runs, baseline) if baseline else []
    result = {"variants": {n: {str(rate): json.loads(variant_config(v, rate).to_json_best_effort()) for rate in flip_rates}
                           for n, v in variants.items()},
              "flip_rates": list(flip_rates), "seeds": list(seeds), "runs": runs, "summary": summary,
              "per_round": per_round, "baseline": baseline, "paired": paired, "notes": notes}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        if notes:
            f.write("Runs left out or stored by another commit or config:\n\n" + "".join(f"- {n}\n" for n in notes) + "\n")
        f.write(markdown_table(summary, metrics))
        if paired:
            f.write(f"\nPaired per-seed differences against {baseline} (mean [95% t-interval]):\n\n"
                    + markdown_paired_table(paired, metrics))
        if per_round:
            f.write("\nPer round (mean ± std over seeds):\n\n" + markdown_round_table(per_round))
    plot_comparison(summary, metrics, os.path.join(out_dir, "plot.png"), title or f"{len(seeds)} seeds")
    if per_round:
        plot_rounds(per_round, os.path.join(out_dir, "rounds.png"), title or f"{len(seeds)} seeds")
    return result


def paired_differences(runs: dict, baseline: str, metrics, confidence: float = 0.95) -> dict:
    """``{variant: {flip rate: {metric: {"diffs", "mean", "std", "lo", "hi", "n"}}}}``: per seed, the variant's
    metric minus the baseline's at the same flip rate and seed (the runs share their SFT policy and pairs, so
    the pairing removes the seed's own variation), then the mean, the sample std and the two-sided
    ``confidence`` Student-t interval of the mean (``mean -+ t_{n-1} * std / sqrt(n)``; NaN bounds for n < 2)."""
    from scipy import stats

    base = {(r["flip_rate"], r["seed"]): r for r in runs[baseline]}
    out: dict = {}
    for name, rs in runs.items():
        if name == baseline:
            continue
        per_rate: dict = {}
        for rate in sorted({r["flip_rate"] for r in rs}):
            for m in metrics:
                diffs = [float(r[m]) - float(base[(rate, r["seed"])][m]) for r in rs
                         if r["flip_rate"] == rate and (rate, r["seed"]) in base
                         and isinstance(r.get(m), (int, float)) and isinstance(base[(rate, r["seed"])].get(m), (int, float))]
                if not diffs:
                    continue
                d = np.asarray(diffs)
                mean, std = Me.mean_std(d)
                half = stats.t.ppf(0.5 + confidence / 2, d.size - 1) * std / np.sqrt(d.size) if d.size > 1 else np.nan
                per_rate.setdefault(str(rate), {})[m] = {"diffs": diffs, "mean": mean, "std": std,
                                                         "lo": float(mean - half), "hi": float(mean + half), "n": int(d.size)}
        out[name] = per_rate
    return out


def unpaired_task_data(runs: dict, baseline: str, key: str = "sft_gold_reward") -> list[str]:
    """Notes for the runs whose task data differs from the baseline run they are paired with (same flip rate and
    seed), so that their paired difference is not paired on one SFT policy: each seed's SFT policy is evaluated
    once (``key``), and runs on the same task data record the same value exactly; runs stored by another machine
    or code may not (floating-point results differ between machines)."""
    base = {(r["flip_rate"], r["seed"]): r[key] for r in runs.get(baseline, []) if isinstance(r.get(key), (int, float))}
    notes = []
    for name, rs in runs.items():
        for r in rs:
            b = base.get((r["flip_rate"], r["seed"]))
            if name != baseline and b is not None and isinstance(r.get(key), (int, float)) and r[key] != b:
                notes.append(f"{name} flip {r['flip_rate']} seed {r['seed']}: not paired on the baseline's task data "
                             f"({key} {r[key]:.5f}, the baseline's {b:.5f})")
    return notes


def markdown_paired_table(paired: dict, metrics) -> str:
    """Rows = (variant, flip rate), columns = metrics as ``mean [lo, hi]`` of the paired differences (the mean
    alone for one seed, which has no interval; ``–`` where absent or undefined)."""

    def cell(d):
        if d is None or np.isnan(d["mean"]):
            return "–"
        return f"{d['mean']:+.3f}" if d["n"] < 2 else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

    lines = ["| variant − baseline | flip rate | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for name, per_rate in paired.items():
        for rate, stats in per_rate.items():
            cells = [cell(stats.get(m)) for m in metrics]
            lines.append(f"| {name} | {float(rate):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aggregate_rounds(runs: list[dict]) -> dict:
    """For runs with a ``rounds`` list (ROPO, APO): ``{flip rate: {round: {metric: {mean, std}}}}`` over seeds."""
    out: dict = {}
    for rate in sorted({r["flip_rate"] for r in runs if r.get("rounds")}):
        group = [r["rounds"] for r in runs if r["flip_rate"] == rate and r.get("rounds")]
        by_round: dict = {}
        for rounds in group:
            for i, rec in enumerate(rounds):
                key = str(rec.get("round", i))
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round":
                        by_round.setdefault(key, {}).setdefault(k, []).append(float(v))
        out[str(rate)] = {rnd: {k: {**dict(zip(("mean", "std"), Me.mean_std(v))), "n": len(v)} for k, v in ms.items()}
                          for rnd, ms in by_round.items()}
    return out


ROUND_METRICS = ("gold_reward", "rm_accuracy", "rm_golden_accuracy", "rm_sample_agreement", "best_of_k_gold", "kl",
                 "flag_precision", "flag_recall", "flag_auroc")


def markdown_round_table(per_round: dict) -> str:
    present = [m for m in ROUND_METRICS if any(m in ms for v in per_round.values() for r in v.values() for ms in r.values())]
    lines = ["| variant | flip rate | round | " + " | ".join(present) + " |", "|---|---|---|" + "---|" * len(present)]
    for name, per_rate in per_round.items():
        for rate, rounds in per_rate.items():
            for rnd, stats in rounds.items():
                cells = [_cell(stats.get(m)) for m in present]
                lines.append(f"| {name} | {float(rate):g} | {rnd} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_rounds(per_round: dict, path: str, title: str) -> None:
    present = [m for m in ROUND_METRICS if any(m in ms for v in per_round.values() for r in v.values() for ms in r.values())]

    def series(key):
        for name, per_rate in per_round.items():
            for rate, rounds in per_rate.items():
                label = name if len(per_rate) == 1 else f"{name} @{float(rate):g}"
                yield label, rounds

    _plot_panels(path, f"{title}, per round" if title else "per round", present, series, "round", integer_x=True)


def _cell(stats: dict | None) -> str:
    """``mean ± std`` of one table cell; the mean alone for a single seed (no sample std); ``–`` if absent or
    undefined (NaN, e.g. a filter's precision when it flagged nothing)."""
    if stats is None or np.isnan(stats["mean"]):
        return "–"
    if stats.get("n", 2) == 1:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def markdown_table(summary: dict, metrics) -> str:
    """Rows = (variant, flip rate), columns = metrics as ``mean ± std`` over seeds (the mean alone for one seed,
    which has no sample std)."""
    lines = ["| variant | flip rate | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for name, per_rate in summary.items():
        for rate, stats in per_rate.items():
            cells = [_cell(stats.get(m)) for m in metrics]
            lines.append(f"| {name} | {float(rate):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(summary: dict, metrics, path: str, title: str) -> None:
    _plot_panels(path, title, list(metrics), lambda key: summary.items(), "label flip rate")


def _plot_panels(path: str, title: str, keys, series, xlabel: str, *, integer_x: bool = False) -> None:
    """One panel per key; ``series(key)`` yields ``(label, {x: {metric: {mean, std}}})`` lines with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, key in zip(np.atleast_1d(axes), keys):
        for label, points in series(key):
            xs = sorted(points, key=float)
            if not any(key in points[x] for x in xs):
                continue
            m = [points[x].get(key, {}).get("mean", np.nan) for x in xs]
            s = [points[x].get(key, {}).get("std", np.nan) for x in xs]
            ax.errorbar([float(x) for x in xs], m, yerr=s, marker="o", capsize=3, label=label)
        ax.set_xlabel(xlabel)
        if integer_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from absl import app, flags

    spec_flag = flags.DEFINE_string("spec", None, "comparison spec (bench/*_table.py)", required=True)
    out = flags.DEFINE_string("out", None, "output directory", required=True)
    rates = flags.DEFINE_list("flip_rates", None, "override the spec's FLIP_RATES")
    seeds = flags.DEFINE_list("seeds", None, "override the spec's SEEDS")
    only = flags.DEFINE_list("variants", None, "run only these variants")
    rerun = flags.DEFINE_bool("rerun_stale", False, "re-run stored runs whose config or commit differ")
    any_commit = flags.DEFINE_bool("any_commit", False, "reuse stored runs of the same config from other commits")
    tabulate = flags.DEFINE_bool("tabulate_only", False, "run nothing: tabulate the stored runs there are, noting "
                                 "those missing or stored by another commit or config")
    cache = flags.DEFINE_string("task_cache", None, "store each seed's task data (SFT policy, pairs) in this directory "
                                "and reuse it: the parts of one comparison, run as separate processes, build it once")

    def _main(_):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
        spec = load_spec(spec_flag.value)
        variants = spec.get_variants()
        if only.value:
            missing = set(only.value) - set(variants)
            if missing:
                raise SystemExit(f"unknown variants {sorted(missing)}; the spec has {sorted(variants)}")
            variants = {k: v for k, v in variants.items() if k in only.value}
        baseline = getattr(spec, "BASELINE", None)
        if baseline is not None and baseline not in variants:
            print(f"note: the baseline {baseline!r} is not among --variants; no paired differences")
        flip_rates = [float(r) for r in rates.value] if rates.value else list(getattr(spec, "FLIP_RATES", (0.0, 0.2, 0.4)))
        seed_list = [int(s) for s in seeds.value] if seeds.value else list(getattr(spec, "SEEDS", (0, 1, 2)))
        run_comparison(variants, flip_rates, seed_list, out.value, metrics=getattr(spec, "METRICS", DEFAULT_METRICS),
                       title=getattr(spec, "TITLE", ""), rerun_stale=rerun.value, any_commit=any_commit.value,
                       baseline=baseline if baseline in variants else None, tabulate_only=tabulate.value,
                       task_cache=cache.value)
        print(f"wrote {out.value}/results.json, table.md and plot.png")

    app.run(_main, argv=argv or sys.argv)
    return 0


if __name__ == "__main__":
    main()
