"""The mechanism plot of reward-conditioned DPO: gold reward of samples against the conditioned goal.

    python bench/rcdpo_goal_plot.py --runs=docs/results/rcdpo_controls,docs/results/rcdpo_scored_sft \
        --out=docs/results/rcdpo_goals.png

One panel per comparison directory (its ``results.json``): per variant with a ``goal_sweep``, the mean over
seeds (and the sample std as error bars) of the gold reward of temperature-1 samples conditioned on each goal,
with DPO's and the SFT policy's (unconditioned) gold reward as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated comparison output directories")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = args.runs.split(",")
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.5 * len(dirs), 3.8), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], dirs):
        with open(os.path.join(d, "results.json")) as f:
            runs = json.load(f)["runs"]
        for name, rs in runs.items():
            sweeps = [r["goal_sweep"] for r in rs if r.get("goal_sweep")]
            if not sweeps:
                continue
            goals = [g for g, _ in sweeps[0]]
            values = np.array([[v for _, v in s] for s in sweeps])
            ax.errorbar(goals, values.mean(0), yerr=values.std(0, ddof=1) if len(values) > 1 else None, marker="o",
                        capsize=3, label=f"{name} ({len(values)} seeds)")
        if "dpo" in runs:
            ax.axhline(np.mean([r["gold_reward"] for r in runs["dpo"]]), color="k", ls="--", label="DPO (no goal)")
        any_run = next(iter(runs.values()))
        ax.axhline(np.mean([r["sft_gold_reward"] for r in any_run]), color="grey", ls=":", label="SFT (no goal)")
        ax.set_title(os.path.basename(os.path.normpath(d)))
        ax.set_xlabel("conditioned goal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("gold reward of samples (T=1)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
