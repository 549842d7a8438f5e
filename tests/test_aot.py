"""``python -m jaxpref.aot``: every program of a run compiled for a TPU topology on this CPU host (libtpu)."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))
pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu (the TPU compiler) is not installed: pip install -e '.[aot]'")


def _aot(*args):
    return subprocess.run([sys.executable, "-m", "jaxpref.aot", "--quiet", *args], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_tiny_run_compiles_for_v5e_2x2_and_fits():
    out = _aot("--config=configs/dpo_tiny.py", "--topology=v5e:2x2")
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    for program in ("accumulate", "apply", "evaluate"):
        row = next(line for line in table.splitlines() if line.startswith(program))
        assert " yes " in row and "/ 15.75 GiB" in row, row
    assert "estimates" in table  # time and MFU are labelled as XLA's estimates


def test_ropo_and_apo_compile_their_samplers_and_reward_model():
    out = _aot("--config=configs/apo_tiny.py", "--topology=v5e:2x2")
    assert out.returncode == 0, out.stderr[-3000:]
    names = [line.split()[0] + (" " + line.split()[1] if line.startswith("rm ") else "") for line in
             out.stdout.splitlines() if line[:3] in ("acc", "app", "eva", "sam", "rm ")]
    assert names == ["accumulate", "apply", "evaluate", "rm accumulate", "rm apply", "rm evaluate", "sampler"], names


def test_an_oversized_run_is_reported_as_not_fitting():
    # a 7B model trained in full on 4 chips: float32 weights, Adam moments and gradients alone are ~108 GiB
    big = ["--config.model.preset=llama2_7b", "--programs=accumulate"]
    out = _aot("--config=configs/dpo_tiny.py", "--topology=v5e:2x2", *big)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "GiB per chip on v5e:2x2" in errors[0] and "15.75 GiB are usable" in errors[0]
    assert "pairs_per_batch" in errors[0] and "Traceback" not in out.stderr
    assert " NO " in out.stdout


@pytest.mark.parametrize("preset,lora,reference", [("tiny_llama", False, "frozen"), ("mistral_7b_v01", True, "none")])
def test_model_flops_count_every_matmul_parameter(preset, lora, reference):
    """The architecture formula against the parameter tree itself: every 2-D+ weight except the input embedding is
    a matmul parameter (6 FLOPs per token in training, 4 under LoRA, 2 for a reference forward)."""
    import math

    import jax

    from jaxpref import aot
    from jaxpref.configs_base import base_config
    from jaxpref.models import init_params
    from jaxpref.train.runtime import model_config

    cfg = base_config()
    cfg.model.preset = preset
    mc = model_config(cfg)
    params = jax.eval_shape(lambda: init_params(mc, jax.random.PRNGKey(0)))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    n = sum(math.prod(x.shape) for path, x in flat if len(x.shape) >= 2 and "embed_tokens" not in jax.tree_util.keystr(path))
    rows, length = 6, 40
    heads, hd = mc.num_attention_heads, mc.head_dim or mc.hidden_size // mc.num_attention_heads
    attention = 4 * mc.num_hidden_layers * length * heads * hd  # per token
    expected = ((4 if lora else 6) * n + 3 * attention) * rows * length
    if reference == "frozen":
        expected += (2 * n + attention) * rows * length
    got = aot.model_flops(cfg, mc, reference=reference, lora=lora, rows=rows, length=length)
    assert got == pytest.approx(expected, rel=1e-12)
