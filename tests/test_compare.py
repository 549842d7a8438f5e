"""The comparison runner's aggregation, tables and plots on hand-made run records."""

import numpy as np
import pytest

from jaxpref.eval import compare as C
from jaxpref.eval import experiment as E


def _runs():
    return [{"flip_rate": 0.2, "seed": s, "gold_reward": g, "rounds": [{"round": 1, "gold_reward": g - 0.1,
                                                                       "rm_accuracy": a}, {"round": 2, "gold_reward": g}]}
            for s, g, a in ((0, 0.5, 0.6), (1, 0.7, 0.8))]


def test_aggregation_tables_and_plots(tmp_path):
    summary = {"a": E.aggregate(_runs())}
    assert summary["a"]["0.2"]["gold_reward"]["mean"] == pytest.approx(0.6)
    assert summary["a"]["0.2"]["gold_reward"]["std"] == pytest.approx(0.1 * 2 ** 0.5)  # sample std of 0.5, 0.7
    table = C.markdown_table(summary, ("gold_reward", "kl"))
    assert "| a | 0.2 | 0.600 ± 0.141 | – |" in table
    rounds = {"a": C.aggregate_rounds(_runs())}
    assert rounds["a"]["0.2"]["1"]["rm_accuracy"]["mean"] == pytest.approx(0.7)
    assert rounds["a"]["0.2"]["1"]["gold_reward"]["mean"] == pytest.approx(0.5)
    assert "rm_accuracy" not in rounds["a"]["0.2"]["2"]
    rt = C.markdown_round_table(rounds)
    assert "| a | 0.2 | 1 | 0.500 ± 0.141 | 0.700 ± 0.141 |" in rt and "| a | 0.2 | 2 | 0.600 ± 0.141 | – |" in rt
    one_seed = {"a": E.aggregate(_runs()[:1])}
    assert one_seed["a"]["0.2"]["gold_reward"]["n"] == 1
    assert "| a | 0.2 | 0.500 | – |" in C.markdown_table(one_seed, ("gold_reward", "kl"))  # no "± 0.000"
    assert "| a | 0.2 | 1 | 0.400 | 0.600 |" in C.markdown_round_table({"a": C.aggregate_rounds(_runs()[:1])})
    C.plot_comparison(summary, ("gold_reward",), str(tmp_path / "p.png"), "t")
    C.plot_rounds(rounds, str(tmp_path / "r.png"), "t")
    assert (tmp_path / "p.png").stat().st_size > 5000 and (tmp_path / "r.png").stat().st_size > 5000


def test_spec_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_spec(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ValueError, match="get_variants"):
        C.load_spec(str(bad))


@pytest.mark.parametrize("name", ["ropo_table", "ropo_tune", "rcdpo_table", "rcdpo_scored_sft", "rcdpo_goal_val", "apo_table", "apo_tune"])
def test_shipped_specs_load_and_share_one_task(name):
    import os

    from jaxpref.algorithms import ALGORITHMS
    from jaxpref.configs_base import validate

    spec = C.load_spec(os.path.join(os.path.dirname(__file__), "..", "bench", f"{name}.py"))
    variants = spec.get_variants()
    assert len(variants) >= 2
    rates = getattr(spec, "FLIP_RATES", (0.0,))
    C._check_same_task(variants, rates)  # raises if a variant would not share the seed's SFT data
    for rate in rates:
        for v in variants.values():
            validate(C.variant_config(v, rate))
            assert C.variant_config(v, rate).algorithm in ALGORITHMS
    assert getattr(spec, "BASELINE", None) in (None, *variants)


def test_specs_with_different_tasks_are_refused():
    import os

    from jaxpref.configs_base import load_config_file

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py")
    a, b = load_config_file(path), load_config_file(path)
    b.task.num_pair_prompts = 7
    with pytest.raises(ValueError, match="share the task section"):
        C._check_same_task({"a": a, "b": b})
    c = load_config_file(path)  # keys that only choose how the data is used may differ
    c.task.golden_quality, c.task.eval_split, c.task.num_policy_prompts = (0.7, 0.95), "validation", 9
    C._check_same_task({"a": a, "c": c})


def test_stored_runs_are_reused_only_for_the_same_config_and_commit():
    import os

    from jaxpref.configs_base import config_to_dict, load_config_file

    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py"))
    run_cfg = C._run_config(cfg, 1, 0.2)
    stored = {"config": {"resolved": config_to_dict(run_cfg), "git_commit": "abc"}}
    assert C.stale_reason(stored, run_cfg, commit="abc") is None
    assert "commit" in C.stale_reason(stored, run_cfg, commit="def")
    assert C.stale_reason(stored, run_cfg, commit=None) is None
    other = C._run_config(cfg, 1, 0.4)
    assert "config.data.flip_rate" in C.stale_reason(stored, other, commit="abc")
    assert C.stale_reason({"gold_reward": 0.5}, run_cfg, commit="abc") == "it records no config"


def test_paired_differences_by_hand():
    """Per seed: variant minus baseline at the same flip rate and seed; mean, sample std and the t-interval
    (t_{0.975, 2} = 4.302653 for three seeds), computed here by hand."""
    base = [{"flip_rate": 0.2, "seed": s, "g": g} for s, g in ((0, 0.5), (1, 0.6), (2, 0.4))]
    other = [{"flip_rate": 0.2, "seed": s, "g": g} for s, g in ((2, 0.7), (0, 0.6), (1, 0.6))]  # any order
    paired = C.paired_differences({"base": base, "other": other}, "base", ("g", "missing"))
    stats = paired["other"]["0.2"]["g"]
    assert stats["diffs"] == pytest.approx([0.3, 0.1, 0.0]) and "missing" not in paired["other"]["0.2"]
    mean, std = 0.4 / 3, float(np.std([0.3, 0.1, 0.0], ddof=1))
    assert stats["mean"] == pytest.approx(mean) and stats["std"] == pytest.approx(std)
    half = 4.302653 * std / 3 ** 0.5
    assert (stats["lo"], stats["hi"]) == pytest.approx((mean - half, mean + half), abs=1e-6)
    assert "base" not in paired
    table = C.markdown_paired_table(paired, ("g",))
    assert f"| other | 0.2 | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] |" in table
    # one seed has no interval (its mean alone); an undefined metric (NaN, e.g. precision of an empty filter) is "–"
    one = C.paired_differences({"base": base[:1], "other": other[1:2]}, "base", ("g",))
    one["other"]["0.2"]["p"] = {"mean": float("nan"), "n": 1}
    assert "| other | 0.2 | +0.100 | – |" in C.markdown_paired_table(one, ("g", "p"))
    assert C._cell({"mean": float("nan"), "std": float("nan"), "n": 3}) == "–"
    assert C._cell({"mean": 0.25, "std": 0.5, "n": 3}) == "0.250 ± 0.500"


def test_runs_on_other_task_data_than_the_baseline_are_noted():
    """A seed's SFT policy is evaluated once; a run whose value differs from that of the baseline run it is paired
    with (same flip rate and seed: made on another machine) is named; runs on the same data, or with no baseline
    run to pair with, are not."""
    base = [{"flip_rate": 0.4, "seed": 0, "sft_gold_reward": 0.31}, {"flip_rate": 0.0, "seed": 0, "sft_gold_reward": 0.32},
            {"flip_rate": 0.4, "seed": 1, "sft_gold_reward": 0.29}]
    other = [{"flip_rate": 0.4, "seed": 0, "sft_gold_reward": 0.32}, {"flip_rate": 0.0, "seed": 0, "sft_gold_reward": 0.32},
             {"flip_rate": 0.4, "seed": 1, "sft_gold_reward": 0.29}, {"flip_rate": 0.4, "seed": 2, "sft_gold_reward": 0.5}]
    notes = C.unpaired_task_data({"base": base, "other": other}, "base")
    assert notes == ["other flip 0.4 seed 0: not paired on the baseline's task data (sft_gold_reward 0.32000, the "
                     "baseline's 0.31000)"]


def test_variants_may_depend_on_the_flip_rate():
    import os

    from jaxpref.configs_base import load_config_file

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py")

    def rdpo(rate):
        c = load_config_file(path)
        c.loss.type, c.loss.label_smoothing = "robust", rate
        return c

    assert C.variant_config(rdpo, 0.4).loss.label_smoothing == 0.4
    C._check_same_task({"dpo": load_config_file(path), "rdpo": rdpo}, (0.0, 0.4))


def test_tabulate_only_runs_nothing_and_notes_missing_and_foreign_runs(tmp_path, monkeypatch):
    import json
    import os

    from jaxpref.configs_base import config_to_dict, load_config_file

    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py"))
    monkeypatch.setattr(E, "run_one", lambda *a, **k: pytest.fail("tabulate_only must not run anything"))
    monkeypatch.setattr(C, "build_task_data", lambda *a, **k: pytest.fail("tabulate_only must not build task data"))
    for seed, g in ((0, 0.5), (1, 0.7)):
        run_dir = tmp_path / "a" / f"flip0.2_seed{seed}"
        run_dir.mkdir(parents=True)
        record = {"resolved": config_to_dict(C._run_config(cfg, seed, 0.2)), "git_commit": "abc" if seed else "0" * 40}
        run_dir.joinpath("results.json").write_text(json.dumps(
            {"flip_rate": 0.2, "seed": seed, "gold_reward": g, "config": record}))
    out = C.run_comparison({"a": cfg}, [0.2], [0, 1, 2], str(tmp_path), metrics=("gold_reward",), tabulate_only=True)
    assert [r["seed"] for r in out["runs"]["a"]] == [0, 1]
    assert out["summary"]["a"]["0.2"]["gold_reward"]["mean"] == pytest.approx(0.6)
    notes = (tmp_path / "table.md").read_text()
    assert "a flip 0.2 seed 2: not run" in notes and "seed 1: used although it was produced by commit abc" in notes


def test_task_cache_builds_each_task_and_seed_once_and_rebuilds_unreadable_files(tmp_path, monkeypatch):
    import os

    from jaxpref.configs_base import load_config_file

    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "dpo_synthetic.py"))
    built = []

    def fake_build(c, seed, progress=False):
        built.append((c.task.num_pair_prompts, seed))
        return {"pairs": c.task.num_pair_prompts, "seed": seed}

    monkeypatch.setattr(C, "build_task_data", fake_build)
    cache = str(tmp_path / "cache")
    assert C.cached_task_data(cfg, 0, cache) == {"pairs": cfg.task.num_pair_prompts, "seed": 0}
    assert C.cached_task_data(cfg, 0, cache) == {"pairs": cfg.task.num_pair_prompts, "seed": 0}  # read back
    assert C.cached_task_data(cfg, 1, cache)["seed"] == 1
    other = cfg.copy_and_resolve_references()
    other.task.num_pair_prompts = 7
    assert C.cached_task_data(other, 0, cache)["pairs"] == 7  # another task section is another entry
    same_data = cfg.copy_and_resolve_references()
    same_data.task.golden_quality, same_data.task.eval_split = (0.7, 0.95), "validation"
    C.cached_task_data(same_data, 0, cache)  # use-only keys: the same entry
    assert len(built) == 3
    C.cached_task_data(cfg, 0, cache, code_version="other commit")  # other code: built again
    assert len(built) == 4
    assert built[:3] == [(cfg.task.num_pair_prompts, 0), (cfg.task.num_pair_prompts, 1), (7, 0)]
    (pkl,) = [f for f in os.listdir(cache) if f.endswith("seed1.pkl")]
    with open(os.path.join(cache, pkl), "wb") as f:
        f.write(b"truncated")
    assert C.cached_task_data(cfg, 1, cache)["seed"] == 1
    assert len(built) == 5
    C.cached_task_data(cfg, 5, None)  # no cache: always built
    C.cached_task_data(cfg, 5, None)
    assert len(built) == 7


def test_rcdpo_goal_choice_uses_validation_sweeps_only():
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "bench", "rcdpo_goal_choice.py")
    import importlib.util

    spec = importlib.util.spec_from_file_location("rcdpo_goal_choice", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    val = {"augmented": [{"seed": s, "goal_sweep": [[8, 0.6 + s / 100], [10, 0.3]]} for s in range(3)]}
    # on test, goal 10 would be best: the choice must still be validation's goal 8
    test = {"augmented": [{"seed": s, "goal_sweep": [[8, 0.5 + s / 10], [10, 0.9]]} for s in range(3)],
            "dpo": [{"flip_rate": 0.0, "seed": s, "gold_reward": 0.55} for s in range(3)]}
    c = mod.choose_goals(val, test)["augmented"]
    assert c["goal"] == 8
    assert [r["gold_reward"] for r in c["test"]] == [0.5, 0.6, 0.7]
    assert c["mean"] == pytest.approx(0.6) and c["std"] == pytest.approx(0.1)
    assert c["paired"]["mean"] == pytest.approx(0.05) and c["paired"]["n"] == 3
