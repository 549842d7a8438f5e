"""The mechanism plot of the ROPO table: where clean and flipped pairs sit at the w-step.

    python bench/ropo_margins.py --runs=docs/results/ropo_table --out=docs/results/ropo_table/margins.png

For each variant with a w-step record (``<runs>/<variant>/flip<rate>_seed<seed>/round_0/round.json``), the
implicit margin ``u = beta * Delta`` of every pair after the first theta-step, split by whether its label was
flipped, pooled over seeds; the shaded band is where ROPO's gradient weight is below DPO's (``u < -1.3`` at
alpha = 14, see ``jaxpref.losses.ropo_gradient_weight``). It also prints, per variant, the share of flipped
pairs in that band, the mean ROPO loss of clean and of flipped pairs, and the AUROC of that loss for finding
the flips.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def load_margins(runs_dir: str, variant: str,
                 flip_rate: str = "*") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """``(u, flipped, loss, aurocs)`` pooled over every seed's first w-step of ``variant`` at ``flip_rate`` (the
    run directories' spelling, e.g. ``0.4``; ``*`` pools every rate)."""
    us, flips, losses, aurocs = [], [], [], []
    for path in sorted(glob.glob(os.path.join(runs_dir, variant, f"flip{flip_rate}_seed*", "round_0", "round.json"))):
        with open(path) as f:
            record = json.load(f)
        if record.get("flipped") is None or "margins" not in record:
            continue
        us.append(np.asarray(record["margins"]))
        flips.append(np.asarray(record["flipped"], bool))
        losses.append(np.asarray(record["losses"]))
        aurocs.append(record.get("flag_auroc", float("nan")))
    if not us:
        raise SystemExit(f"no flip{flip_rate}_seed*/round_0/round.json with margins under "
                         f"{os.path.join(runs_dir, variant)}")
    return np.concatenate(us), np.concatenate(flips), np.concatenate(losses), aurocs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a comparison's output directory")
    parser.add_argument("--variants", default="ropo,dpo_ropo_schedule", help="comma-separated variants")
    parser.add_argument("--flip_rate", default="*", help="only the runs at this flip rate, e.g. 0.4 (default: all)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxpref.losses import ropo_gradient_weight

    variants = args.variants.split(",")
    # where ROPO's gradient weight falls below DPO's sigma(-u), alpha = 14
    grid = np.linspace(-10, 10, 4001)
    below = grid[np.asarray(ropo_gradient_weight(grid, alpha=14.0)) < 1.0 / (1.0 + np.exp(grid))]
    edge = float(below.max()) if below.size else float("nan")
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 3.6), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        u, flipped, loss, aurocs = load_margins(args.runs, variant, args.flip_rate)
        bins = np.linspace(np.quantile(u, 0.005), np.quantile(u, 0.995), 60)
        ax.hist(u[~flipped], bins=bins, alpha=0.6, density=True, label=f"clean ({(~flipped).sum()})")
        ax.hist(u[flipped], bins=bins, alpha=0.6, density=True, label=f"flipped ({flipped.sum()})")
        ax.axvspan(bins[0], min(edge, bins[-1]), color="grey", alpha=0.15, label=f"ROPO damps (u < {edge:.2f})")
        rate = "" if args.flip_rate == "*" else f", {float(args.flip_rate):.0%} flips"
        ax.set_title(f"{variant}{rate}: u at the w-step")
        ax.set_xlabel("u")
        ax.legend(fontsize=7)
        print(f"{variant}: {len(aurocs)} seeds; flipped with u < {edge:.2f}: {np.mean(u[flipped] < edge):.3f} "
              f"(clean {np.mean(u[~flipped] < edge):.3f}); median u clean {np.median(u[~flipped]):+.2f}, flipped "
              f"{np.median(u[flipped]):+.2f}; w-step loss clean {loss[~flipped].mean():.3f}, flipped "
              f"{loss[flipped].mean():.3f}; AUROC per seed {', '.join(f'{a:.3f}' for a in aurocs)}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
