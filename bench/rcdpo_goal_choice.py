"""Reward-conditioned DPO at the inference goal chosen on validation, reported on the test split.

    python bench/rcdpo_goal_choice.py --val=docs/results/rcdpo_goal_val --test=docs/results/rcdpo_scored_sft \
        --out=docs/results/rcdpo_goal_val/choice.json

Per variant with goal sweeps in both directories: the goal ``g*`` maximising the mean (over seeds) validation
gold reward, then per seed the *test* gold reward at ``g*`` (the test run's own sweep: same prompts and sampling
seed as a run with ``inference_goal = g*``), its mean and sample std, and the paired per-seed difference
against the test directory's ``dpo`` runs with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from jaxpref.eval import compare as C
from jaxpref.eval import metrics as Me


def _runs(path: str) -> dict:
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)["runs"]


def choose_goals(val_runs: dict, test_runs: dict, baseline: str = "dpo") -> dict:
    """``{variant: {"goal", "val_mean_by_goal", "test", "mean", "std", "paired"}}`` (see the module docstring)."""
    out = {}
    for name, rs in val_runs.items():
        sweeps = [dict((float(g), v) for g, v in r["goal_sweep"]) for r in rs if r.get("goal_sweep")]
        tests = {r["seed"]: dict((float(g), v) for g, v in r["goal_sweep"]) for r in test_runs.get(name, [])
                 if r.get("goal_sweep")}
        if not sweeps or not tests:
            continue
        goals = sorted(sweeps[0])
        val_mean = {g: float(np.mean([s[g] for s in sweeps])) for g in goals}
        best = max(goals, key=lambda g: val_mean[g])
        at_goal = [{"flip_rate": 0.0, "seed": s, "gold_reward": t[best]} for s, t in sorted(tests.items())]
        mean, std = Me.mean_std(np.array([r["gold_reward"] for r in at_goal]))
        paired = C.paired_differences({baseline: test_runs[baseline], name: at_goal}, baseline, ("gold_reward",))
        out[name] = {"goal": best, "val_mean_by_goal": val_mean, "test": at_goal, "mean": mean, "std": std,
                     "paired": paired[name].get("0.0", {}).get("gold_reward")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", required=True, help="comparison directory of the validation runs")
    parser.add_argument("--test", required=True, help="comparison directory of the test runs (with dpo)")
    parser.add_argument("--out", default=None, help="write the choice as JSON here")
    args = parser.parse_args()
    choice = choose_goals(_runs(args.val), _runs(args.test))
    for name, c in choice.items():
        p = c["paired"]
        print(f"{name}: goal {c['goal']:g} (validation {c['val_mean_by_goal'][c['goal']]:.3f}); test gold reward "
              f"{c['mean']:.3f} ± {c['std']:.3f}; vs dpo {p['mean']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] (n={p['n']})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(choice, f, indent=1)


if __name__ == "__main__":
    main()
