"""Ahead-of-time compilation for TPU slices on this CPU host (jaxpref/aot_support.py).

The compiling tests need libtpu (``pip install -e '.[aot]'``) and skip without it; CI installs only ``.[test]``.
References are hand-computed: per-chip shard sizes from shapes, dtypes and the mesh; matmul flops as
``2 * M * N * K`` per chip; the physical HBM of a v5e chip (16 GiB) as the ceiling of what the compiler allows.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpref import aot_support as A
from jaxpref.errors import UserError

GiB = 1024**3
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[aot]')")


@pytest.fixture(scope="module")
def v5e_2x2():
    return A.topology_devices("v5e:2x2")


# --- a small training step on a 2x2 mesh -------------------------------------------------------------------

B, D, H, O = 64, 512, 1024, 256  # batch, input, hidden, output


def _sgd_program(devices):
    """One SGD step of a 2-layer MLP on a (data=2, model=2) mesh; returns (fn, args, in/out shardings)."""
    mesh = Mesh(np.asarray(devices).reshape(2, 2), ("data", "model"))

    def ns(*spec):
        return NamedSharding(mesh, P(*spec))

    params = {"w1": jax.ShapeDtypeStruct((D, H), jnp.float32, sharding=ns(None, "model")),  # columns split
              "b1": jax.ShapeDtypeStruct((H,), jnp.float32, sharding=ns()),  # replicated
              "w2": jax.ShapeDtypeStruct((H, O), jnp.bfloat16, sharding=ns("model", None))}  # rows split
    x = jax.ShapeDtypeStruct((B, D), jnp.float32, sharding=ns("data", None))
    y = jax.ShapeDtypeStruct((B, O), jnp.float32, sharding=ns("data", None))

    def step(p, x, y):
        def loss(p):
            h = jax.nn.gelu(x @ p["w1"] + p["b1"])
            out = h.astype(jnp.bfloat16) @ p["w2"]
            return jnp.mean((out.astype(jnp.float32) - y) ** 2)

        value, grads = jax.value_and_grad(loss)(p)
        return jax.tree.map(lambda a, g: (a - 0.1 * g).astype(a.dtype), p, grads), value

    p_sh = jax.tree.map(lambda s: s.sharding, params)
    return step, (params, x, y), (p_sh, ns("data", None), ns("data", None)), (p_sh, ns())


# per-chip shard bytes, by hand: x [B/2, D] f32, y [B/2, O] f32, w1 [D, H/2] f32, b1 [H] f32, w2 [H/2, O] bf16
X_BYTES, Y_BYTES = (B // 2) * D * 4, (B // 2) * O * 4
PARAM_BYTES = D * (H // 2) * 4 + H * 4 + (H // 2) * O * 2


@needs_libtpu
def test_sgd_step_memory_per_chip_is_the_shard_sizes(v5e_2x2):
    fn, args, in_sh, out_sh = _sgd_program(v5e_2x2)
    report = A.analyze_program("sgd_step", fn, args, in_sh, out_sh, v5e_2x2, donate_argnums=(0,))
    assert report.device_kind == "TPU v5 lite" and report.num_devices == 4
    assert report.argument_bytes == X_BYTES + Y_BYTES + PARAM_BYTES == 1_413_120
    # donated params come back in place: aliased output bytes = the params' shards; plus the scalar loss
    assert report.alias_bytes == PARAM_BYTES
    assert PARAM_BYTES < report.output_bytes <= PARAM_BYTES + 4096
    assert report.temp_bytes >= 0 and report.generated_code_bytes > 0
    assert report.total_bytes == report.argument_bytes + report.output_bytes + report.temp_bytes - PARAM_BYTES
    # what the compiler lets a v5e chip use: a bit less than its 16 GiB of HBM
    assert report.hbm_source == "compiler" and 15 * GiB < report.hbm_bytes < 16 * GiB
    assert report.fits is True
    # flops per chip: the five matmuls of forward + backward (no gradient for x), 2*M*N*K each, plus a few
    # percent of elementwise work
    fwd1, fwd2 = 2 * (B // 2) * D * (H // 2), 2 * (B // 2) * (H // 2) * O
    matmuls = fwd1 + fwd2 + fwd1 + 2 * fwd2  # dW1 = x^T dh; dW2 = h^T dout; dh = dout W2^T
    assert matmuls <= report.flops <= 1.1 * matmuls
    assert report.compile_seconds > 0
    table = A.format_table([report])
    assert "sgd_step" in table and "1.35 MiB" in table and "yes" in table


@needs_libtpu
def test_without_donation_nothing_is_aliased(v5e_2x2):
    fn, args, in_sh, out_sh = _sgd_program(v5e_2x2)
    report = A.analyze_program("sgd_step", fn, args, in_sh, out_sh, v5e_2x2)
    assert report.alias_bytes == 0
    assert report.total_bytes == report.argument_bytes + report.output_bytes + report.temp_bytes


@needs_libtpu
def test_matmul_estimate_gives_an_mfu(v5e_2x2):
    mesh = Mesh(np.asarray(v5e_2x2).reshape(2, 2), ("data", "model"))
    n = 4096
    a = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=NamedSharding(mesh, P("data", None)))
    b = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "model")))
    compiled, seconds = A.compile_program(lambda a, b: a @ b, (a, b))
    report = A.program_report("matmul", compiled, seconds, v5e_2x2)
    assert report.flops == 2 * (n // 2) * (n // 2) * n  # each chip: [n/2, n] @ [n, n/2]
    assert report.peak_flops == 197e12
    assert report.optimal_seconds > 0
    assert 0 < report.mfu <= 1
    assert report.mfu == pytest.approx(report.flops / (report.optimal_seconds * 197e12))


# --- programs that do not fit ------------------------------------------------------------------------------

@needs_libtpu
def test_oversized_program_is_reported_as_not_fitting(v5e_2x2):
    mesh = Mesh(np.asarray(v5e_2x2), ("all",))
    per_chip = 17 * GiB  # a v5e chip has 16 GiB of HBM
    big = jax.ShapeDtypeStruct((4 * per_chip // 2,), jnp.bfloat16, sharding=NamedSharding(mesh, P("all")))
    report = A.analyze_program("double_it", lambda x: x * 2, (big,), devices=v5e_2x2)
    assert report.fits is False and report.error.startswith("RESOURCE_EXHAUSTED")
    assert report.required_bytes == 2 * per_chip  # input + output, exact to the compiler's 0.01 GiB print
    assert 15 * GiB < report.hbm_bytes < 16 * GiB
    message = A.does_not_fit_message(report, topology="v5e:2x2")
    assert "\n" not in message and message.startswith("error: program 'double_it' needs 34.00 GiB per chip")
    assert "v5e:2x2" in message and f"{report.hbm_bytes / GiB:.2f} GiB are usable" in message
    for knob in ("pairs_per_batch", "remat_policy", "mesh"):
        assert knob in message
    custom = A.does_not_fit_message(report, knobs=["fewer layers"])
    assert custom.endswith("try fewer layers.") and "4 x TPU v5 lite" in custom
    assert "NO" in A.format_table([report])


@needs_libtpu
def test_other_compile_errors_propagate(v5e_2x2):
    x = jax.ShapeDtypeStruct((4,), jnp.float32)
    with pytest.raises((TypeError, ValueError), match="shapes"):  # a bug in the program, not "does not fit"
        A.analyze_program("bad", lambda x: x + jnp.ones(3), (x,), devices=v5e_2x2)


# --- topologies --------------------------------------------------------------------------------------------

@needs_libtpu
@pytest.mark.parametrize("name, count, kind, peak", [
    ("v5e:4x4", 16, "TPU v5 lite", 197e12),
    ("v4:2x2x4", 16, "TPU v4", 275e12),  # one device per chip (megacore), as JAX shows real v4
    ("v5p:2x2x2", 8, "TPU v5", 459e12),
    ("v6e:2x2", 4, "TPU v6 lite", 918e12),
])
def test_topology_devices(name, count, kind, peak):
    devices = A.topology_devices(name)
    chips = int(np.prod([int(n) for n in name.split(":")[1].split("x")]))
    assert len(devices) == count == chips
    assert {d.device_kind for d in devices} == {kind} and {d.platform for d in devices} == {"tpu"}
    assert A.peak_flops_per_device(devices[0]) == peak
    hbm, source = A.usable_hbm_bytes(devices)
    assert source == "compiler" and 0.9 * A.CHIP_HBM_BYTES[kind] < hbm <= A.CHIP_HBM_BYTES[kind]


@needs_libtpu
@pytest.mark.parametrize("name", ["v9z:2x2", "v5e-16", "v5e:3x3"])
def test_unknown_topology_is_one_line(name):
    with pytest.raises(A.AotError) as e:
        A.topology_devices(name)
    assert isinstance(e.value, UserError)
    text = str(e.value)
    assert "\n" not in text and repr(name) in text and "v5e:4x4" in text


_LOAD_LIBTPU = ("from jax.experimental import topologies as T; "
                "print(len(T.get_topology_desc(platform='tpu', topology_name='v5e:2x2').devices), flush=True)")


@needs_libtpu
def test_compiles_while_another_process_holds_libtpu():
    # libtpu takes /tmp/libtpu_lockfile when it loads; a process that loads it plainly holds the lock
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    env["JAX_PLATFORMS"] = "cpu"
    holder = subprocess.Popen([sys.executable, "-c", _LOAD_LIBTPU + "; import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        holder.stdout.readline()  # loaded (or refused because yet another process holds the lock: just as good)
        plain = subprocess.run([sys.executable, "-c", _LOAD_LIBTPU], capture_output=True, text=True, env=env,
                               timeout=120)
        if "lockfile" not in plain.stderr:
            pytest.skip("this libtpu does not lock /tmp/libtpu_lockfile")
        code = "from jaxpref import aot_support as A; print(len(A.topology_devices('v5e:2x2')))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0 and out.stdout.split()[-1] == "4", out.stderr[-2000:]
    finally:
        holder.communicate(input="", timeout=60)


def test_missing_libtpu_says_how_to_install(monkeypatch):
    monkeypatch.setattr(A, "_libtpu_available", lambda: False)
    with pytest.raises(A.AotError, match=r"pip install -e '\.\[aot\]'") as e:
        A.topology_devices("v5e:4x4")
    assert "\n" not in str(e.value)


# --- pure helpers (no libtpu needed) -----------------------------------------------------------------------

def test_parse_out_of_memory():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(26.05G) exceeds available HBM (15.75G).")
    assert A.parse_out_of_memory(message) == (round(26.05 * GiB), round(15.75 * GiB))
    other_units = "total memory required for HLO temporaries (2.00T) exceeds available HBM (512.00M)"
    assert A.parse_out_of_memory(other_units) == (2 * 1024**4, 512 * 1024**2)
    assert A.parse_out_of_memory("INVALID_ARGUMENT: something else") is None


def _report(**kw):
    base = dict(name="step", device_kind="TPU v5 lite", num_devices=16, argument_bytes=3 * GiB,
                output_bytes=2 * GiB, temp_bytes=10 * GiB, alias_bytes=2 * GiB, generated_code_bytes=1024,
                required_bytes=None, hbm_bytes=int(15.75 * GiB), hbm_source="table", flops=1e15,
                optimal_seconds=10.0, peak_flops=197e12, compile_seconds=42.0)
    base.update(kw)
    return A.ProgramReport(**base)


def test_report_arithmetic():
    r = _report()
    assert r.total_bytes == 13 * GiB  # 3 + 2 + 10 - 2 (aliased outputs live in the donated arguments)
    assert r.fits is True
    assert r.mfu == pytest.approx(1e15 / (10.0 * 197e12))
    assert _report(temp_bytes=14 * GiB).fits is False
    assert _report(hbm_bytes=None).fits is None and _report(optimal_seconds=None).mfu is None
    refused = _report(argument_bytes=None, output_bytes=None, temp_bytes=None, alias_bytes=None,
                      required_bytes=26 * GiB, error="RESOURCE_EXHAUSTED: ...")
    assert refused.total_bytes == 26 * GiB and refused.fits is False


def test_format_table_and_message():
    rows = A.format_table([_report(), _report(name="eval_step", temp_bytes=None, flops=None)]).splitlines()
    assert len(rows) == 4 and rows[0].split()[0] == "program" and set(rows[1]) <= {"-", " "}
    assert "13.00 GiB / 15.75 GiB" in rows[2] and "yes" in rows[2] and "1 PFLOP" in rows[2] and "50.8%" in rows[2]
    assert rows[3].startswith("eval_step") and "?" in rows[3]
    msg = A.does_not_fit_message(_report(temp_bytes=21 * GiB), topology="v5e:4x4")
    assert msg.startswith("error: program 'step' needs 24.00 GiB per chip on v5e:4x4 (TPU v5 lite) but 15.75 GiB")
    assert A.format_bytes(1_413_120) == "1.35 MiB" and A.format_bytes(512) == "512 B"


def test_peak_flops_per_core_device():
    class Core:  # a v4 TensorCore seen as its own device (libtpu's non-megacore layout): half a chip
        device_kind, num_cores = "TPU v4", 1

    assert A.peak_flops_per_device(Core()) == 275e12 / 2
    Core.device_kind = "NVIDIA H100 80GB HBM3"
    assert A.peak_flops_per_device(Core()) is None


def test_gpu_memory_bytes():
    text = "gpu_device_info {\n  core_count: 132\n  device_memory_size: 85017493504\n}\nplatform_name: \"CUDA\"\n"
    assert A.gpu_memory_bytes(text) == 85017493504
    assert A.gpu_memory_bytes("platform_name: \"CUDA\"") is None
