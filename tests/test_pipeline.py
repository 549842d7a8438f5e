"""The one path from config to result: schema errors, resume rules, workdir ownership, the NaN stop,
and every task adapter reaching the same algorithm function."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxpref import errors
from jaxpref.configs_base import load_config_file, validate
from jaxpref.pipeline import run

ROOT = os.path.dirname(os.path.dirname(__file__))
CONFIGS = os.path.join(ROOT, "configs")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxpref.main", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _one_error_line(out, message):
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_misspelt_key_and_wrong_type_are_one_line(tmp_path):
    _one_error_line(_cli("--config=configs/dpo_tiny.py", f"--workdir={tmp_path}", "--config.train.learnin_rate=1"),
                    "unknown config key config.train.learnin_rate; did you mean config.train.learning_rate?")
    _one_error_line(_cli("--config=configs/dpo_tiny.py", f"--workdir={tmp_path}", "--config.train.learning_rate=abc"),
                    "config.train.learning_rate")


@pytest.mark.parametrize("key,value,message", [
    ("train.learning_rate", -1e-3, "must be > 0.0"),
    ("loss.beta", 0.0, "must be > 0.0"),
    ("loss.beta", -0.1, "must be > 0.0"),
    ("train.num_steps", -3, "must be >= 0"),
    ("train.grad_accum_steps", 0, "must be >= 1"),
    ("train.pairs_per_batch", 0, "must be >= 1"),
    ("model.dtype", "float7", "must be one of"),
    ("ropo.filter_ratio", 1.5, "must be in [0.0, 1.0)"),
])
def test_values_out_of_range_are_config_errors(key, value, message):
    cfg = load_config_file(os.path.join(CONFIGS, "dpo_tiny.py"))
    section, name = key.split(".")
    cfg[section][name] = value
    with pytest.raises(errors.ConfigError, match=rf"config\.{key}=.*{message}".replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        validate(cfg)
    cfg = load_config_file(os.path.join(CONFIGS, "dpo_tiny.py"))
    cfg.train.learnin_rate = 1.0  # a misspelt key in a config file is caught too
    with pytest.raises(errors.ConfigError, match="did you mean config.train.learning_rate"):
        validate(cfg)


def _tiny(**train):
    cfg = load_config_file(os.path.join(CONFIGS, "dpo_tiny.py"))
    cfg.data.max_rows = 32
    cfg.data.eval_fraction = 0.0
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.buckets = 96, 64, (96,)
    cfg.train.num_steps, cfg.train.save_every, cfg.train.warmup_steps = 2, 1, 0
    cfg.train.async_checkpointing = False
    cfg.mesh.num_devices = 1
    cfg.export.hf = False
    for k, v in train.items():
        cfg.train[k] = v
    return cfg


def _steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def test_resume_rules(tmp_path):
    workdir = str(tmp_path / "run")
    first = run(_tiny(), workdir, progress=False)
    assert first["status"] == "done" and first["step"] == 2
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["train"]["num_steps"] == 2 and first["config"]["resolved"]["loss"]["type"] == "sigmoid"
    # a changed loss type would train something else: refused, naming the key
    changed = _tiny()
    changed.loss.type = "ipo"
    with pytest.raises(errors.ConfigError, match=r"changed: config\.loss\.type.*--allow_config_changes"):
        run(changed, workdir, progress=False)
    # more steps: continues from the checkpoint, and the metrics have each step once
    longer = run(_tiny(num_steps=4), workdir, progress=False)
    assert longer["step"] == 4 and _steps(workdir) == [1, 2, 3, 4]
    again = run(_tiny(num_steps=4), workdir, progress=False)  # a finished run re-run keeps its final metrics
    assert again["step"] == 4 and again["last_metrics"]["loss"] == pytest.approx(longer["last_metrics"]["loss"])
    # the same paths with other contents: refused
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _tiny()
    cfg.data.train_path = str(data)
    run(cfg, str(tmp_path / "data"), progress=False)
    data.write_text("".join(json.dumps(dict(r, chosen=r["chosen"] + "!")) + "\n" for r in rows))
    with pytest.raises(errors.ConfigError, match="training data changed"):
        run(cfg, str(tmp_path / "data"), progress=False)


def test_nan_stop_names_a_finite_checkpoint_that_resumes(tmp_path):
    workdir = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"last good checkpoint \(step (\d+)\)") as info:
        run(_tiny(learning_rate=1e20, num_steps=6, max_grad_norm=0.0, schedule="constant"), workdir, progress=False)
    named = int(info.value.args[0].split("last good checkpoint (step ")[1].split(")")[0])
    saved = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())
    assert saved[-1] == named  # the diverged checkpoint was discarded; resuming starts from the named one
    out = run(_tiny(num_steps=6, learning_rate=1e-4, max_grad_norm=0.0, schedule="constant"), workdir, progress=False,
              allow_config_changes=True)
    assert out["status"] == "done" and out["step"] == 6 and np.isfinite(out["last_metrics"]["loss"])


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
    from jaxpref import workdir as W

    with W.claim(str(tmp_path)):  # this process holds the workdir, as a running job would
        out = _cli("--config=configs/dpo_tiny.py", f"--workdir={tmp_path}")
    _one_error_line(out, "is in use by another run")
    assert not (tmp_path / W.LOCK_FILE).exists()  # released


def test_unwritable_workdir_fails_before_setup(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(errors.ConfigError, match="not writable"):
        run(_tiny(), str(target / "sub"), progress=False)


@pytest.mark.parametrize("algorithm", ["ropo", "reward_conditioned", "apo"])
def test_real_data_and_gold_task_reach_the_same_algorithm_function(algorithm, tmp_path, monkeypatch):
    """``python -m jaxpref.main`` on real rows and the gold-reward task both call ``ALGORITHMS[name].train`` with a
    runtime and plain task inputs (the hook records them and stops)."""
    from jaxpref.algorithms import ALGORITHMS
    from jaxpref.tasks import TaskInputs
    from jaxpref.train.runtime import Runtime

    seen = []

    def hook(runtime, inputs, workdir, *, progress=True):
        seen.append((runtime.cfg.task.name, runtime, inputs))
        return {"status": "done"}

    monkeypatch.setattr(ALGORITHMS[algorithm], "train", hook)
    real = {"ropo": "ropo_tiny.py", "reward_conditioned": "rcdpo_tiny.py", "apo": "apo_tiny.py"}[algorithm]
    gold = {"ropo": "ropo_synthetic.py", "reward_conditioned": "rcdpo_synthetic.py", "apo": "apo_synthetic.py"}[algorithm]
    cfg = load_config_file(os.path.join(CONFIGS, real))
    cfg.data.max_rows = 16
    run(cfg, str(tmp_path / "real"), progress=False)
    cfg = load_config_file(os.path.join(CONFIGS, gold))
    cfg.task.num_sft_prompts, cfg.task.sft_steps, cfg.task.num_pair_prompts, cfg.task.num_eval_prompts = 64, 2, 16, 8
    cfg.task.num_policy_prompts = 8
    run(cfg, str(tmp_path / "gold"), progress=False)
    assert [name for name, _, _ in seen] == ["", "gold"]
    for _, runtime, inputs in seen:
        assert isinstance(runtime, Runtime) and isinstance(inputs, TaskInputs) and len(inputs.rows) > 0
        assert inputs.params is not None
    assert seen[1][2].evaluate is not None and seen[0][2].evaluate is None
    if algorithm == "apo":
        assert all(p["golden"] for _, _, i in seen for p in i.rm_prompts)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    workdir = tmp_path / "run"
    run(_tiny(num_steps=3), str(workdir), progress=False)
    data_files = [p for p in (workdir / "checkpoints" / "3" / "state").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert data_files
    for p in data_files:  # truncate every array file of the newest checkpoint
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    (workdir / "results.json").unlink()
    with caplog.at_level("WARNING", logger="jaxpref"):
        out = run(_tiny(num_steps=4), str(workdir), progress=False)
    assert out["step"] == 4
    assert any("checkpoint 3" in r.message and "using step 2 instead" in r.message for r in caplog.records)
    assert _steps(str(workdir)) == [1, 2, 3, 4]
