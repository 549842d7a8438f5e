"""Ahead-of-time (AOT) compilation for TPU slices that are not attached: pure building blocks.

With libtpu installed (``pip install -e '.[aot]'``), JAX can describe a TPU slice by name and compile programs
for it on a CPU-only host; nothing is allocated and no TPU is needed::

    devices = topology_devices("v5e:4x4")                          # 16 abstract TPU v5e chips
    mesh = jaxpref.sharding.make_mesh(fsdp=-1, devices=devices)
    args = abstract_arrays(shapes, shardings)                       # ShapeDtypeStructs carrying shardings
    compiled, seconds = compile_program(step, args, in_shardings, out_shardings, donate_argnums=(0,))
    report = program_report("train_step", compiled, seconds, devices)
    print(format_table([report]))

or, in one call that also turns the compiler's out-of-memory error into a report::

    report = analyze_program("train_step", step, args, in_shardings, out_shardings, devices, donate_argnums=(0,))
    if not report.fits:
        print(does_not_fit_message(report))    # error: train_step needs 26.05 GiB per chip ...

Every number is the compiler's own. ``compiled.memory_analysis()`` gives per-device bytes of arguments, outputs,
temporaries and aliases (outputs that reuse a donated argument's buffer); ``compiled.cost_analysis()`` gives the
flops of the per-device (SPMD-partitioned) program and, on TPU, ``optimal_seconds``, XLA's own estimate of its
run time. A program that does not fit makes the TPU compiler raise ``RESOURCE_EXHAUSTED: ... the total memory
required for HLO temporaries (26.05G) exceeds available HBM (15.75G)``; :func:`analyze_program` reads both numbers
from that message.

Facts checked with jax 0.10.2 + libtpu 0.0.42.1 on a CPU-only host:

* Installing libtpu does not move JAX off the CPU: ``jax.devices()`` still returns CPU devices (JAX uses TPU only
  when it finds TPU chips on the PCI bus). Without ``JAX_PLATFORMS=cpu`` the first backend initialisation, and
  in any case the first :func:`topology_devices`, print libtpu's harmless complaints about the missing TPU
  worker variables (``TPU_ACCELERATOR_TYPE``, ``TPU_WORKER_HOSTNAMES``) to stderr; nothing hangs (0.6 s).
  Do not set those variables to silence it: jaxpref reads ``TPU_WORKER_HOSTNAMES`` as "this is a TPU pod".
* Topology names are ``<chip>:<chips per axis>``: ``v5e:2x2``, ``v5e:4x4``, ``v4:2x2x4``, ``v5p:2x2x2``,
  ``v6e:4x4``. Device kinds: ``TPU v5 lite`` (v5e), ``TPU v4``, ``TPU v5`` (v5p), ``TPU v6 lite`` (v6e).
  v4 and v5p chips have two TensorCores; JAX on real v4/v5p hardware shows one device per chip ("megacore"),
  and so does :func:`topology_devices` (libtpu's default for v4 would be one device per core, with half the
  chip's HBM each).
* libtpu locks ``/tmp/libtpu_lockfile`` even to compile only: one process at a time, unless
  ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (:func:`allow_concurrent_libtpu` sets it on hosts without TPU chips).
* Compile-only devices have no ``memory_stats()`` ("only supported for addressable PjRt devices"), so the HBM
  a device may use comes from the compiler's own limit (:func:`usable_hbm_bytes`), else from
  :data:`USABLE_HBM_BYTES`.

CUDA GPUs can be compiled for without a GPU too (:func:`gpu_topology_devices`, given the GPU's XLA target
config), with the limits its docstring lists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxpref.errors import UserError

GiB = 1024**3

#: Physical HBM per chip, from Google Cloud's TPU product pages (v4: 32 GiB shared by the chip's 2 cores; v5e:
#: 16 GiB; v6e: 32 GiB; v5p: listed as "95 GB", but libtpu lets one program use 95.74 GiB, so 96 GiB here).
#: Key: ``device.device_kind``. For reference: whether a program fits is decided by :func:`usable_hbm_bytes`.
CHIP_HBM_BYTES: dict[str, int] = {
    "TPU v4": 32 * GiB,
    "TPU v5 lite": 16 * GiB,
    "TPU v5": 96 * GiB,
    "TPU v6 lite": 32 * GiB,
}

#: HBM per device that the TPU compiler lets a program use (the rest is reserved by the runtime), as libtpu
#: 0.0.42.1 reports it in its out-of-memory message ("exceeds available HBM (15.75G)"); measured on this
#: table's devices as :func:`topology_devices` makes them (v4 and v5p: one device per chip). The fallback of
#: :func:`usable_hbm_bytes`, which asks the installed compiler.
USABLE_HBM_BYTES: dict[str, int] = {
    "TPU v4": int(30.75 * GiB),
    "TPU v5 lite": int(15.75 * GiB),
    "TPU v5": int(95.74 * GiB),
    "TPU v6 lite": int(31.25 * GiB),
}

#: Peak dense bf16 matmul throughput per chip, FLOP/s, from Google Cloud's TPU product pages.
PEAK_BF16_FLOPS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}

#: TensorCores per chip (a device may be a whole chip, ``device.num_cores == 2`` on v4/v5p, or one core).
CORES_PER_CHIP: dict[str, int] = {"TPU v4": 2, "TPU v5 lite": 1, "TPU v5": 2, "TPU v6 lite": 1}

#: Chip generations whose TensorCore pairs are joined into one device, as JAX does on real hardware.
_MEGACORE = ("v4", "v5p")

#: What usually brings a step's memory down, for :func:`does_not_fit_message`.
DEFAULT_KNOBS = (
    "a smaller micro-batch (config.train.pairs_per_batch, with more config.train.grad_accum_steps)",
    "more rematerialisation (config.model.remat_policy=full)",
    "a larger slice or more sharding (config.mesh: fsdp / tensor)",
)

_INSTALL_HINT = "install the TPU compiler with: pip install -e '.[aot]'"


class AotError(UserError):
    """A topology that cannot be compiled for (unknown name, libtpu missing); one line with the fix."""


def _libtpu_available() -> bool:
    """libtpu is the ``libtpu`` package or a file named by ``TPU_LIBRARY_PATH`` (JAX looks in both)."""
    if os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
        return True
    return importlib.util.find_spec("libtpu") is not None


def allow_concurrent_libtpu() -> None:
    """Let several processes of this host load libtpu at once, when the host has no TPU chips.

    libtpu takes ``/tmp/libtpu_lockfile`` when it loads, also to compile only, so a second process fails with
    "ABORTED: Internal error when accessing libtpu multi-process lockfile" while one AOT compile runs (e.g. the
    tests beside a ``python -m jaxpref.aot``). The lock guards the chips; with none attached there is nothing to
    guard, so this sets ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (unless set already). On a TPU VM it does nothing.
    Must run before libtpu loads in this process (:func:`topology_devices` calls it first)."""
    if "ALLOW_MULTIPLE_LIBTPU_LOAD" in os.environ:
        return
    try:
        from jax._src import hardware_utils  # what JAX itself uses to decide whether TPU chips are attached

        chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except Exception:  # an internal API may move; then leave libtpu's own behaviour alone
        return
    if chips == 0:
        os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"


def topology_devices(name: str) -> list[jax.Device]:
    """Abstract devices of the TPU slice ``name`` (e.g. ``"v5e:4x4"``, ``"v4:2x2x4"``), for compiling only.

    One device per chip, in the order JAX gives (``jax.sharding.Mesh`` / ``jaxpref.sharding.make_mesh`` take
    them as they are). v4 and v5p get libtpu's ``megacore`` chip configuration, as on real hardware.

    Raises:
      AotError: libtpu is not installed, or ``name`` is not a topology libtpu knows (message says which).
    """
    if not _libtpu_available():
        raise AotError(f"AOT topology {name!r}: libtpu (the TPU compiler) is not installed; {_INSTALL_HINT}")
    allow_concurrent_libtpu()
    from jax.experimental import topologies

    chip = name.split(":", 1)[0].strip().lower()
    options = {"chip_config_name": "megacore"} if chip in _MEGACORE else {}
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **options).devices)
    except Exception as e:  # libtpu's JaxRuntimeError: INVALID_ARGUMENT with the reason
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise AotError(
            f"AOT topology {name!r} is not a TPU slice libtpu can compile for ({reason}); write "
            "<chip>:<chips per axis>, e.g. v5e:2x2, v5e:4x4, v4:2x2x4, v5p:2x2x4, v6e:4x4."
        ) from None


def gpu_topology_devices(target_config: str, devices_per_host: int, hosts: int = 1) -> list[jax.Device]:
    """Abstract CUDA GPUs (``hosts`` x ``devices_per_host``), for compiling only, on a host without a GPU.

    ``target_config`` is the text of an XLA ``GpuTargetConfigProto`` describing the GPU: XLA writes one as
    ``*.gpu_target_config.pbtxt`` when any program is compiled on that GPU with
    ``XLA_FLAGS=--xla_dump_to=DIR``. It must come from the same XLA (jax) version: a newer one's extra fields
    do not parse. Needs the CUDA PJRT plugin of the installed jax (``jax-cuda12-plugin`` and
    ``jax-cuda12-pjrt``, no CUDA libraries) and ``JAX_PLATFORMS=cpu``: without it the plugin tries to start
    CUDA, fails, and JAX then reports "topology not implemented for cuda".

    What the GPU compiler gives (an SGD step compiled with jax 0.11.2 on an H100 machine, with and without the
    GPU, and with jax 0.10.2 on a CPU-only host): ``memory_analysis()`` arguments, outputs and aliases equal
    the real compile's; temporaries leave out the cuBLAS workspace that autotuning on the device adds (32 MiB
    on the H100); ``cost_analysis()`` is ``None``; and an oversized program is not refused (compare
    :func:`gpu_memory_bytes` yourself). Pass ``hbm=(bytes, "target_config")`` to :func:`program_report`.
    """
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="cuda", topology_name="",
                                            topology=f"1x{hosts}x{devices_per_host}", target_config=target_config)
    except Exception as e:
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise AotError(
            f"AOT for CUDA GPUs: {reason}; install the CUDA plugin of this jax (pip install jax-cuda12-plugin=="
            f"{jax.__version__} jax-cuda12-pjrt=={jax.__version__}), set JAX_PLATFORMS=cpu, and pass a "
            "GpuTargetConfigProto dumped by this jax version."
        ) from None
    return list(topo.devices)


def gpu_memory_bytes(target_config: str) -> int | None:
    """``device_memory_size`` of a ``GpuTargetConfigProto`` text (the GPU's whole memory; JAX's allocator takes
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of it, 0.75 by default), else ``None``."""
    m = re.search(r"device_memory_size:\s*(\d+)", target_config)
    return int(m.group(1)) if m else None


def abstract_arrays(shapes: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying ``sharding``: inputs to lower and compile without data.

    ``shapes`` is a pytree of anything with ``.shape``/``.dtype`` (e.g. ``jax.eval_shape`` output); ``shardings``
    a matching pytree of ``jax.sharding.Sharding`` (or a single one for every leaf)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings), shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def compile_program(
    fn: Callable,
    abstract_args: Sequence[Any],
    in_shardings: Any = None,
    out_shardings: Any = None,
    donate_argnums: int | Sequence[int] = (),
    static_argnums: int | Sequence[int] = (),
) -> tuple[Any, float]:
    """``jax.jit(fn, ...).lower(*abstract_args).compile()``: the compiled program and the wall seconds it took.

    ``abstract_args`` are ``jax.ShapeDtypeStruct`` pytrees (shardings on them or in ``in_shardings``; ``None``
    means "take the argument's own"). ``fn`` may already be a ``jax.jit`` result; then the sharding and
    donation arguments must be left at their defaults. The compiler's errors propagate, among them
    ``RESOURCE_EXHAUSTED`` when the program does not fit (see :func:`analyze_program`).
    """
    start = time.perf_counter()
    if hasattr(fn, "lower"):
        if in_shardings is not None or out_shardings is not None or donate_argnums or static_argnums:
            raise ValueError("compile_program: fn is already jitted; give shardings/donation to jax.jit instead.")
        jitted = fn
    else:
        kwargs: dict[str, Any] = dict(donate_argnums=donate_argnums, static_argnums=static_argnums)
        if in_shardings is not None:
            kwargs["in_shardings"] = in_shardings
        if out_shardings is not None:
            kwargs["out_shardings"] = out_shardings
        jitted = jax.jit(fn, **kwargs)
    compiled = jitted.lower(*abstract_args).compile()
    return compiled, time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class ProgramReport:
    """What one compiled program needs per device (for the TPU kinds here: per chip).

    Memory ``total_bytes = argument + output + temp - alias`` (MaxText's ``train_compile`` accounting: an output
    aliased to a donated argument occupies the argument's buffer). When the compiler refused the program
    (``error`` set) the per-kind byte counts are unknown (``None``) and ``total_bytes`` is the compiler's
    "total memory required" figure. ``flops`` are those of the per-device program; ``optimal_seconds`` is the TPU
    compiler's run-time estimate; ``mfu = flops / (optimal_seconds * peak_flops)`` is the model-FLOP
    utilisation that estimate implies (``None`` when a number is missing).
    """

    name: str
    device_kind: str
    num_devices: int
    argument_bytes: int | None
    output_bytes: int | None
    temp_bytes: int | None
    alias_bytes: int | None
    generated_code_bytes: int | None
    required_bytes: int | None  # the compiler's own total, from its out-of-memory message (else None)
    hbm_bytes: int | None  # what a device may use
    hbm_source: str  # "compiler" (asked libtpu), "table" (USABLE_HBM_BYTES) or "unknown"
    flops: float | None
    optimal_seconds: float | None
    peak_flops: float | None  # per device, bf16
    compile_seconds: float
    error: str | None = None  # the compiler's message when it refused the program
    model_flops: float | None = None  # per device, counted from the architecture (see jaxpref.aot.model_flops)

    @property
    def total_bytes(self) -> int | None:
        if self.required_bytes is not None:
            return self.required_bytes
        parts = (self.argument_bytes, self.output_bytes, self.temp_bytes, self.alias_bytes)
        if any(p is None for p in parts):
            return None
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    @property
    def fits(self) -> bool | None:
        """``False`` when the compiler refused it or the total exceeds the HBM; ``None`` when unknowable."""
        if self.error is not None:
            return False
        if self.total_bytes is None or self.hbm_bytes is None:
            return None
        return self.total_bytes <= self.hbm_bytes

    @property
    def mfu(self) -> float | None:
        if not (self.flops and self.optimal_seconds and self.peak_flops):
            return None
        return self.flops / (self.optimal_seconds * self.peak_flops)

    @property
    def seconds_at_peak(self) -> float | None:
        """``model_flops / peak_flops``: the program's time at 100% MFU, a lower bound on its real time (not an
        estimate of it)."""
        if not (self.model_flops and self.peak_flops):
            return None
        return self.model_flops / self.peak_flops


def peak_flops_per_device(device: jax.Device) -> float | None:
    """bf16 peak of one device: the chip's :data:`PEAK_BF16_FLOPS`, scaled by the share of its cores the device
    has (``num_cores / CORES_PER_CHIP``); ``None`` for kinds not in the table."""
    kind = device.device_kind
    if kind not in PEAK_BF16_FLOPS:
        return None
    cores = getattr(device, "num_cores", None) or CORES_PER_CHIP[kind]
    return PEAK_BF16_FLOPS[kind] * cores / CORES_PER_CHIP[kind]


_OOM = re.compile(r"total memory required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM "
                  r"\(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GiB, "T": 1024**4}


def parse_out_of_memory(message: str) -> tuple[int, int] | None:
    """``(required, available)`` bytes from the TPU compiler's ``RESOURCE_EXHAUSTED`` message, else ``None``.

    The compiler prints binary units with two decimals (``16.00G`` = 16 GiB), so the values are exact to
    about 0.005 of the unit."""
    m = _OOM.search(message)
    if not m:
        return None
    return (round(float(m.group(1)) * _UNITS[m.group(2)]), round(float(m.group(3)) * _UNITS[m.group(4)]))


def usable_hbm_bytes(devices: Sequence[jax.Device]) -> tuple[int | None, str]:
    """HBM a device of ``devices`` may use, and where the number came from.

    Asks the installed compiler: compiling a 1 TiB-per-device program fails with a message that states the
    available HBM (~0.05 s). Falls back to :data:`USABLE_HBM_BYTES`; ``(None, "unknown")`` for other kinds.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    devices = list(devices)
    if devices[0].platform == "tpu":  # other compilers do not refuse oversized programs
        mesh = jax.sharding.Mesh(np.asarray(devices), ("all",))
        huge = jax.ShapeDtypeStruct((1024**4,), np.int8, sharding=NamedSharding(mesh, PartitionSpec()))
        try:
            jax.jit(lambda x: x + 1).lower(huge).compile()
        except Exception as e:  # RESOURCE_EXHAUSTED is the expected outcome
            parsed = parse_out_of_memory(str(e))
            if parsed:
                return parsed[1], "compiler"
    kind = devices[0].device_kind
    if kind in USABLE_HBM_BYTES:
        return USABLE_HBM_BYTES[kind], "table"
    return None, "unknown"


def _hbm(devices, hbm: tuple[int | None, str] | None) -> tuple[int | None, str]:
    return usable_hbm_bytes(devices) if hbm is None else hbm


def _estimate(cost: dict) -> float | None:
    """``optimal_seconds``, or ``None`` where XLA has none: absent off TPU, and negative (about -1) when its cost
    model cannot time some instruction of the program (seen on a small f32/bf16 SGD step on v5e)."""
    seconds = cost.get("optimal_seconds")
    return float(seconds) if seconds is not None and seconds > 0 else None


def program_report(name: str, compiled: Any, compile_seconds: float, devices: Sequence[jax.Device], *,
                   hbm: tuple[int | None, str] | None = None) -> ProgramReport:
    """The :class:`ProgramReport` of a compiled program. ``hbm`` = ``usable_hbm_bytes(devices)`` if given
    (saves asking the compiler again for every program of one topology)."""
    devices = list(devices)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    hbm_bytes, source = _hbm(devices, hbm)

    def field(attr):
        return None if mem is None else int(getattr(mem, attr))

    return ProgramReport(
        name=name, device_kind=devices[0].device_kind, num_devices=len(devices),
        argument_bytes=field("argument_size_in_bytes"), output_bytes=field("output_size_in_bytes"),
        temp_bytes=field("temp_size_in_bytes"), alias_bytes=field("alias_size_in_bytes"),
        generated_code_bytes=field("generated_code_size_in_bytes"), required_bytes=None,
        hbm_bytes=hbm_bytes, hbm_source=source, flops=cost.get("flops"), optimal_seconds=_estimate(cost),
        peak_flops=peak_flops_per_device(devices[0]), compile_seconds=compile_seconds)


def refused_report(name: str, error: BaseException | str, compile_seconds: float, devices: Sequence[jax.Device], *,
                   hbm: tuple[int | None, str] | None = None) -> ProgramReport:
    """The :class:`ProgramReport` of a program the compiler refused as too large (``fits`` is ``False``);
    required and available bytes come from the compiler's message."""
    devices = list(devices)
    message = str(error)
    parsed = parse_out_of_memory(message)
    hbm_bytes, source = (parsed[1], "compiler") if parsed else _hbm(devices, hbm)
    return ProgramReport(
        name=name, device_kind=devices[0].device_kind, num_devices=len(devices), argument_bytes=None,
        output_bytes=None, temp_bytes=None, alias_bytes=None, generated_code_bytes=None,
        required_bytes=parsed[0] if parsed else None, hbm_bytes=hbm_bytes, hbm_source=source, flops=None,
        optimal_seconds=None, peak_flops=peak_flops_per_device(devices[0]), compile_seconds=compile_seconds,
        error=message.strip().splitlines()[0] if message.strip() else type(error).__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a compile error is the compiler saying the program does not fit in HBM."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or parse_out_of_memory(text) is not None


def analyze_program(name: str, fn: Callable, abstract_args: Sequence[Any], in_shardings: Any = None,
                    out_shardings: Any = None, devices: Sequence[jax.Device] = (), *,
                    donate_argnums: int | Sequence[int] = (), static_argnums: int | Sequence[int] = (),
                    hbm: tuple[int | None, str] | None = None) -> ProgramReport:
    """Compile ``fn`` for ``devices`` (see :func:`compile_program`) and report it; a program too large for the
    HBM gives a report with ``fits == False`` instead of the compiler's exception. Other errors propagate."""
    if not devices:
        raise ValueError("analyze_program: pass the topology's devices (topology_devices(name)).")
    start = time.perf_counter()
    try:
        compiled, seconds = compile_program(fn, abstract_args, in_shardings, out_shardings, donate_argnums,
                                            static_argnums)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        return refused_report(name, e, time.perf_counter() - start, devices, hbm=hbm)
    return program_report(name, compiled, seconds, devices, hbm=hbm)


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.2f}"


def format_bytes(n: int | None) -> str:
    """``1.35 MiB``, ``15.75 GiB``: binary units, three significant digits at most (``?`` for unknown)."""
    if n is None:
        return "?"
    for unit, size in (("TiB", 1024**4), ("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _flops(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} FLOP"


def format_table(reports: Sequence[ProgramReport]) -> str:
    """A fixed-width text table, one row per program, all per device: arguments, temporaries, outputs, aliased
    bytes, total / usable HBM, whether it fits, XLA's flops, the compiler's time estimate, the MFU it implies,
    the model FLOPs counted from the architecture and their time at 100% of the chip's peak (a lower bound),
    and the compile time."""
    header = ("program", "arguments", "temporaries", "outputs", "aliased", "total / HBM", "fits", "XLA flops",
              "est. time", "MFU", "model flops", "time at peak", "compile")
    rows = [header]
    for r in reports:
        fits = {True: "yes", False: "NO", None: "?"}[r.fits]
        rows.append((
            r.name, format_bytes(r.argument_bytes), format_bytes(r.temp_bytes), format_bytes(r.output_bytes),
            format_bytes(r.alias_bytes), f"{format_bytes(r.total_bytes)} / {format_bytes(r.hbm_bytes)}", fits,
            _flops(r.flops), "?" if r.optimal_seconds is None else f"{r.optimal_seconds * 1e3:.3g} ms",
            "?" if r.mfu is None else f"{100 * r.mfu:.1f}%", "-" if r.model_flops is None else _flops(r.model_flops),
            "-" if r.seconds_at_peak is None else f">= {r.seconds_at_peak * 1e3:.3g} ms", f"{r.compile_seconds:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def does_not_fit_message(report: ProgramReport, knobs: Sequence[str] = DEFAULT_KNOBS, *,
                         topology: str = "") -> str:
    """The one ``error:`` line for a program that does not fit: which program, GiB needed per device vs usable,
    on what, and the knobs that would help (first is tried first)."""
    where = f"{topology} ({report.device_kind})" if topology else f"{report.num_devices} x {report.device_kind}"
    need = _gib(report.total_bytes)
    have = _gib(report.hbm_bytes)
    help_ = "; ".join(knobs)
    return (f"error: program {report.name!r} needs {need} GiB per chip on {where} but {have} GiB are usable"
            + (f"; try {help_}" if help_ else "") + ".")
