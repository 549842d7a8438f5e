"""Launch scripts: each one is executed for real and starts a 2-process jax.distributed DPO run on CPU.

The cluster is faked at its edge, never inside jaxpref: small stand-ins for ``srun``, ``gcloud``, ``pip`` and
``python``/``python3`` sit first on PATH. ``srun`` starts one task per ``SLURM_NTASKS`` with the variables real
srun sets; ``gcloud ... scp/ssh --worker=all`` copies the tarball into, and runs the command in, one home
directory per fake TPU worker with the TPU-VM variables JAX reads (``TPU_WORKER_HOSTNAMES``, ``TPU_WORKER_ID``);
``pip`` only records its arguments (no reinstall in a test); ``python`` records its argv and execs this
interpreter. Every stand-in logs the argv it received, so the tests also check that ``--dry-run`` prints
exactly the command lines that run.

The run itself is ``configs/dpo_tiny.py`` shrunk by overrides (2 steps on 16 rows, no HF export), with gloo CPU
collectives; two processes on 127.0.0.1 and a free port stand in for two hosts. A run counts as multi-process
when both processes exit 0 and the metrics file (written by process 0 only) holds steps 1 and 2 once: two
independent single-process runs would both write it.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/dpo_tiny.py"
TINY = ["--config.train.num_steps=2", "--config.data.max_rows=16", "--config.export.hf=False",
        "--config.train.async_checkpointing=False"]
RUN_TIMEOUT = 240  # seconds; one run takes ~30 s on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- stand-ins for the cluster's commands ------------------------------------------------------------------

_LOG = """
import json, os, sys
def log(name, argv, **extra):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"cmd": name, "argv": argv, **extra}) + "\\n")
"""

_PYTHON = _LOG + """
log(os.path.basename(sys.argv[0]), sys.argv[1:], jax_platforms=os.environ.get("JAX_PLATFORMS"))
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in sys.argv:  # a process that dies after a while
    import time
    time.sleep(float(os.environ["FAKE_FAIL_AFTER"]))
    sys.exit(17)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""

_PIP = _LOG + """
log("pip", sys.argv[1:], cwd=os.getcwd())
"""

# srun on one node: one task per SLURM_NTASKS, each with the variables srun gives it; the first failing task
# stops the others (--kill-on-bad-exit).
_SRUN = _LOG + """
import subprocess, time
argv = sys.argv[1:]
log("srun", argv)
while argv and argv[0].startswith("-"):
    argv = argv[1:]
n = int(os.environ["SLURM_NTASKS"])
procs = [subprocess.Popen(argv, env=dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID="0",
                                         SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"],
                                         SLURM_STEP_NUM_NODES=str(n))) for i in range(n)]
status = 0
while any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
        for p in procs:
            if p.poll() is None:
                p.terminate()
    time.sleep(0.2)
sys.exit(next((p.returncode for p in procs if p.returncode), 0))
"""

# gcloud compute tpus tpu-vm {create, scp, ssh}: workers are directories FAKE_TPU_ROOT/worker<i> (their $HOME).
# ssh runs the command with the variables of a Cloud TPU VM that JAX's cluster detection reads; the MEGASCALE_*
# variables are set empty (one slice) so that nothing asks the GCE metadata server, and GCE_METADATA_IP points
# at a closed local port in case anything still does.
_GCLOUD = _LOG + """
import shutil, subprocess
argv = sys.argv[1:]
log("gcloud", argv)
if argv[:3] != ["compute", "tpus", "tpu-vm"] or len(argv) < 5:
    sys.exit("fake gcloud: unexpected command " + " ".join(argv))
verb, args = argv[3], argv[4:]
n = int(os.environ["FAKE_TPU_WORKERS"])
homes = [os.path.join(os.environ["FAKE_TPU_ROOT"], f"worker{i}") for i in range(n)]
if verb == "create":
    sys.exit(0)
if "--worker=all" not in args:
    sys.exit("fake gcloud: expected --worker=all")
if verb == "scp":
    src, dst = [a for a in args if not a.startswith("--")]
    name, path = dst.split(":", 1)
    assert path.startswith("~/"), dst
    for home in homes:
        os.makedirs(home, exist_ok=True)
        shutil.copy(src, os.path.join(home, path[2:]))
    sys.exit(0)
if verb == "ssh":
    command = next(a[len("--command="):] for a in args if a.startswith("--command="))
    hosts = ",".join(["127.0.0.1"] * n)
    procs = [subprocess.Popen(["bash", "-c", command], cwd=home, env=dict(
        os.environ, HOME=home, TPU_WORKER_ID=str(i), TPU_WORKER_HOSTNAMES=hosts, MEGASCALE_COORDINATOR_ADDRESS="",
        MEGASCALE_NUM_SLICES="", MEGASCALE_SLICE_ID="", GCE_METADATA_IP="127.0.0.1:9"))
        for i, home in enumerate(homes)]
    sys.exit(max(p.wait() for p in procs))
sys.exit("fake gcloud: unexpected verb " + verb)
"""


def _fake_bin(tmp_path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("python", _PYTHON), ("python3", _PYTHON), ("pip", _PIP), ("srun", _SRUN),
                       ("gcloud", _GCLOUD)]:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return str(bin_dir)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """A persistent XLA compilation cache shared by this module's runs: the three launchers start the same
    2-process program, so only the first pays for compiling it (~15 s of ~25 s per process on 2 cores)."""
    return str(tmp_path_factory.mktemp("xla_cache"))


def _env(tmp_path, cache=None, **extra) -> dict:
    """This environment minus anything that would make a child JAX see another cluster or device count
    (conftest forces 8 host devices through XLA_FLAGS), plus the fake commands first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TPU_", "MEGASCALE_", "JAX_", "XLA_", "PYTEST_"))}
    env.update(PATH=_fake_bin(tmp_path) + os.pathsep + env.get("PATH", ""), FAKE_LOG=str(tmp_path / "calls.jsonl"),
               TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    if cache:  # cache every program, however small or quick to compile
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
                   # the cache key hashes LIBTPU_INIT_ARGS, to which JAX's TPU-VM setup (forced on in the TPU
                   # test) adds this flag; set it everywhere so that all runs share their CPU programs
                   LIBTPU_INIT_ARGS="--xla_tpu_use_enhanced_launch_barrier=true")
    env.update(extra)
    return env


def _calls(tmp_path, cmd: str | None = None) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        calls = [json.loads(line) for line in f]
    return [c for c in calls if cmd is None or c["cmd"] == cmd]


def _script(*args, env, timeout=RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def _dry(*args, env) -> list[list[str]]:
    out = _script(*args, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def _assert_two_process_run(out: subprocess.CompletedProcess, workdir) -> None:
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if any(k.startswith("train/") for k in r)]
    assert train_steps == [1, 2]  # written once, by process 0: the two processes formed one job
    assert os.path.isdir(workdir / "checkpoints" / "2")


def _main_argv(argv: list[str], interpreter: str) -> list[str]:
    """The ``jaxpref.main`` arguments of ``[..., interpreter, -m, jaxpref.main, ARGS...]``."""
    i = argv.index(interpreter)
    assert argv[i + 1:i + 3] == ["-m", "jaxpref.main"], argv
    return argv[i + 3:]


# --- local_multiprocess.sh ---------------------------------------------------------------------------------

def test_local_multiprocess_runs_two_processes(tmp_path, cache):
    port, workdir = _free_port(), tmp_path / "run"
    # options and N anywhere, an override before --config=: the script puts --config= first, as absl needs
    args = ["launch/local_multiprocess.sh", TINY[0], "2", CONFIG, "--port", str(port), f"--workdir={workdir}",
            *TINY[1:]]
    env = _env(tmp_path, cache)
    dry = _dry(*args[:3], "--dry-run", *args[3:], env=env)
    want = [["JAX_PLATFORMS=cpu", "python", "-m", "jaxpref.main", CONFIG, f"--workdir={workdir}", *TINY,
             f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2",
             f"--config.distributed.process_id={i}", "--config.distributed.cpu_collectives=gloo"] for i in range(2)]
    assert dry == want

    out = _script(*args, env=env)
    _assert_two_process_run(out, workdir)
    ran = sorted(_calls(tmp_path, "python"), key=lambda c: c["argv"][-2])
    assert [c["argv"] for c in ran] == [line[2:] for line in want]  # what ran is what --dry-run printed
    assert {c["jax_platforms"] for c in ran} == {"cpu"}
    assert "[p0] " in out.stdout and "[p1] " in out.stdout


def test_local_multiprocess_stops_all_when_one_fails(tmp_path):
    # process 1 dies after 8 s, when process 0 waits for it in jax.distributed.initialize (for 5 minutes, JAX's
    # default): the script must stop process 0 at once and return process 1's status.
    env = _env(tmp_path, FAKE_FAIL="--config.distributed.process_id=1", FAKE_FAIL_AFTER="8")
    start = time.monotonic()
    out = _script("launch/local_multiprocess.sh", "2", CONFIG, f"--workdir={tmp_path / 'run'}", "--port",
                  str(_free_port()), *TINY, env=env, timeout=120)
    assert out.returncode == 17, (out.stdout[-2000:], out.stderr[-2000:])
    assert time.monotonic() - start < 60
    assert len(_calls(tmp_path, "python")) == 2


def test_local_multiprocess_usage_errors(tmp_path):
    env = _env(tmp_path)
    for args, needle in [(["--dry-run", CONFIG], "number of processes"), (["--dry-run", "2"], "--config")]:
        out = _script("launch/local_multiprocess.sh", *args, env=env, timeout=30)
        assert out.returncode == 2 and needle in out.stderr and out.stderr.startswith("error:"), out.stderr


# --- slurm_gpu.sbatch --------------------------------------------------------------------------------------

def test_slurm_runs_two_tasks(tmp_path, cache):
    workdir = tmp_path / "run"
    # what sbatch gives the batch script: a job id, a node list and the task count (one task per node)
    env = _env(tmp_path, cache, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="127.0.0.1", SLURM_NTASKS="2",
               JAX_COORDINATOR_PORT=str(_free_port()))
    args = ["launch/slurm_gpu.sbatch", TINY[0], CONFIG, f"--workdir={workdir}", *TINY[1:],
            "--config.distributed.cpu_collectives=gloo"]
    dry = _dry(args[0], TINY[0], "--dry-run", *args[2:], env=env)
    assert dry == [["srun", "--kill-on-bad-exit=1", "python", "-m", "jaxpref.main", CONFIG, f"--workdir={workdir}",
                    *TINY, "--config.distributed.cpu_collectives=gloo", "--config.distributed.initialize=True"]]

    out = _script(*args, env=env)
    _assert_two_process_run(out, workdir)
    assert [c["argv"] for c in _calls(tmp_path, "srun")] == [dry[0][1:]]
    assert len(_calls(tmp_path, "python")) == 2


def test_slurm_requires_config_and_workdir(tmp_path):
    env = _env(tmp_path)
    for args, needle in [(["--workdir=/w"], "--config"), ([CONFIG], "--workdir")]:
        out = _script("launch/slurm_gpu.sbatch", "--dry-run", *args, env=env, timeout=30)
        assert out.returncode == 2 and needle in out.stderr, out.stderr


# --- tpu_pod.sh --------------------------------------------------------------------------------------------

def test_tpu_pod_runs_on_two_fake_workers(tmp_path, cache):
    workdir = tmp_path / "run"
    env = _env(tmp_path, cache, FAKE_TPU_WORKERS="2", FAKE_TPU_ROOT=str(tmp_path / "pod"),
               JAX_COORDINATOR_PORT=str(_free_port()),
               # what a Cloud TPU VM has and this host has not: JAX's TPU-VM detection (it looks for TPU chips
               # on the PCI bus) forced on; JAX_PLATFORMS=cpu keeps the computation on CPU.
               JAX_FORCE_TPU_INIT="1")
    args = ["launch/tpu_pod.sh", "--create", "v5litepod-8", "my-pod", TINY[0], "us-west4-a", CONFIG,
            f"--workdir={workdir}", *TINY[1:], "--config.distributed.cpu_collectives=gloo"]
    dry = _dry(*args[:4], "--dry-run", *args[4:], env=env)
    assert len(dry) == 4 and not _calls(tmp_path)  # nothing ran
    assert dry[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-pod", "--zone=us-west4-a",
                      "--accelerator-type=v5litepod-8", "--version=tpu-ubuntu2204-base"]
    assert dry[1][:2] == ["bash", "-c"] and "git ls-files" in dry[1][2]
    tarball = str(tmp_path / "jaxpref-my-pod.tar.gz")
    assert dry[2] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "my-pod:~/jaxpref.tar.gz",
                      "--zone=us-west4-a", "--worker=all"]
    assert dry[3][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-west4-a",
                          "--worker=all"]
    remote = dry[3][8]
    assert remote.startswith("--command=")
    main = shlex.split(remote.split("python3 -m jaxpref.main", 1)[1])
    assert main == [CONFIG, f"--workdir={workdir}", *TINY, "--config.distributed.cpu_collectives=gloo",
                    "--config.distributed.initialize=True"]

    out = _script(*args, env=env)
    _assert_two_process_run(out, workdir)
    assert [c["argv"] for c in _calls(tmp_path, "gcloud")] == [line[1:] for line in (dry[0], dry[2], dry[3])]
    pips = _calls(tmp_path, "pip")
    assert [c["argv"] for c in pips] == [["install", "-q", "-e", ".[tpu]"]] * 2
    assert sorted(c["cwd"] for c in pips) == [str(tmp_path / "pod" / f"worker{i}" / "jaxpref") for i in range(2)]
    ran = _calls(tmp_path, "python3")
    assert len(ran) == 2 and all(_main_argv(["python3", *c["argv"]], "python3") == main for c in ran)
    # each worker ran the checkout it unpacked, which holds the config but neither .git nor the virtualenv
    copy = tmp_path / "pod" / "worker0" / "jaxpref"
    assert (copy / "configs" / "dpo_tiny.py").is_file() and (copy / "jaxpref" / "main.py").is_file()
    assert not (copy / ".git").exists() and not (copy / ".venv").exists()


def test_tpu_pod_usage_errors(tmp_path):
    env = _env(tmp_path)
    for args, needle in [(["pod", CONFIG, "--workdir=/w"], "ZONE"), (["pod", "zone", "--workdir=/w"], "--config"),
                         (["pod", "zone", CONFIG], "--workdir")]:
        out = _script("launch/tpu_pod.sh", "--dry-run", *args, env=env, timeout=30)
        assert out.returncode == 2 and needle in out.stderr, out.stderr


@pytest.mark.parametrize("script", ["launch/local_multiprocess.sh", "launch/slurm_gpu.sbatch", "launch/tpu_pod.sh"])
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
