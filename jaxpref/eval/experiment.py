"""Experiments on the gold-reward task: seeds x flip rates, one command, a JSON of results and a PNG plot.

    python -m jaxpref.eval.experiment --config=configs/dpo_synthetic.py \
        --flip_rates=0,0.2,0.4 --seeds=0,1,2 --out=results/dpo_noise

Per seed the SFT policy and its sampled pairs are built once (:func:`jaxpref.tasks.gold.build_task_data`)
and shared by every flip rate; per (flip rate, seed) :func:`jaxpref.pipeline.run` flips the pairs, trains
``config.algorithm`` from the SFT policy and scores the result with the task's evaluation. ``results.json`` holds every
run and, per flip rate, the mean and std over seeds of each metric; ``plot.png`` shows gold reward and
clean accuracy against the flip rate with std error bars.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from jaxpref.eval import metrics as Me
from jaxpref.tasks.gold import build_task_data
from jaxpref.train.logging import write_results

SCALARS = ("gold_reward", "gold_reward_greedy", "win_rate", "clean_accuracy", "kl")


def run_one(cfg, td, flip_rate: float, seed: int, workdir: str, progress: bool = False) -> dict:
    """One run of ``cfg.algorithm`` on the gold-reward task at ``flip_rate`` and ``seed`` from prebuilt task data
    ``td``, through :func:`jaxpref.pipeline.run` (the path ``python -m jaxpref.main`` takes)."""
    from jaxpref.pipeline import run

    cfg = cfg.copy_and_resolve_references()
    cfg.seed, cfg.data.flip_rate = seed, flip_rate
    cfg.task.name = "gold"
    return with_eval_scalars(run(cfg, workdir, task_data=td, progress=progress))


def with_eval_scalars(result: dict) -> dict:
    """``result`` with its held-out pair metrics also as top-level scalars, so tables can show them
    (``"eval/rewards/chosen"``: beta times the mean log-ratio ``log pi - log pi_ref`` of the held-out chosen)."""
    result.update({f"eval/{k}": v for k, v in (result.get("eval") or {}).items() if isinstance(v, (int, float))})
    return result


def aggregate(runs: list[dict]) -> dict:
    """Per flip rate: mean, sample std and number ``n`` of seeds of every scalar metric present."""
    out = {}
    for rate in sorted({r["flip_rate"] for r in runs}):
        group = [r for r in runs if r["flip_rate"] == rate]
        keys = sorted({k for r in group for k, v in r.items() if isinstance(v, (int, float)) and k not in ("seed",)})
        values = {k: [r[k] for r in group if k in r] for k in keys}
        out[str(rate)] = {k: {**dict(zip(("mean", "std"), Me.mean_std(v))), "n": len(v)} for k, v in values.items()}
        out[str(rate)]["seeds"] = [r["seed"] for r in group]
    return out


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted(float(r) for r in summary)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("gold_reward", "clean_accuracy", "win_rate"),
                              ("gold reward of samples (T=1)", "clean held-out accuracy", "win rate vs SFT")):
        m = [summary[str(r)].get(key, {}).get("mean", np.nan) for r in rates]
        s = [summary[str(r)].get(key, {}).get("std", np.nan) for r in rates]
        ax.errorbar(rates, m, yerr=s, marker="o", capsize=4)
        if key == "gold_reward":
            sft = [summary[str(r)].get("sft_gold_reward", {}).get("mean", np.nan) for r in rates]
            ax.plot(rates, sft, "--", color="gray", label="SFT policy")
            ax.legend()
        ax.set_xlabel("label flip rate")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(cfg, flip_rates, seeds, out_dir: str, progress: bool = True) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    runs = []
    for seed in seeds:
        td = build_task_data(cfg, seed, progress=progress)
        for rate in flip_rates:
            workdir = os.path.join(out_dir, f"{cfg.algorithm}_flip{rate}_seed{seed}")
            r = run_one(cfg, td, rate, seed, workdir, progress=progress)
            runs.append(r)
            print(f"[{cfg.algorithm}] flip {rate} seed {seed}: gold {r['gold_reward']:.3f} (sft {r['sft_gold_reward']:.3f}) "
                  f"clean acc {r.get('clean_accuracy', float('nan')):.3f} win {r['win_rate']:.3f} kl {r['kl']:.2f} "
                  f"({r['train_seconds']:.0f} s)", flush=True)
    summary = aggregate(runs)
    result = {"algorithm": cfg.algorithm, "config": json.loads(cfg.to_json_best_effort()), "runs": runs,
              "summary": summary}
    write_results(out_dir, result)
    plot(summary, os.path.join(out_dir, "plot.png"), f"{cfg.algorithm} on the gold-reward task ({len(seeds)} seeds)")
    return result


def main(argv=None) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "experiment config (configs/*_synthetic.py)",
                                             lock_config=False)
    rates = flags.DEFINE_list("flip_rates", ["0", "0.2", "0.4"], "label flip rates")
    seeds = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
    out = flags.DEFINE_string("out", None, "output directory", required=True)
    quiet = flags.DEFINE_bool("quiet", False, "no progress bars")

    def _main(_):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
        run_experiment(config.value, [float(r) for r in rates.value], [int(s) for s in seeds.value], out.value,
                       progress=not quiet.value)
        print(f"wrote {out.value}/results.json and {out.value}/plot.png")

    app.run(_main, argv=argv or sys.argv)
    return 0


if __name__ == "__main__":
    main()
