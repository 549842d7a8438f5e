"""Launch scripts: --dry-run prints the commands they would run."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(__file__))


def _dry(*args):
    out = subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_local_multiprocess_dry_run():
    lines = _dry("launch/local_multiprocess.sh", "--dry-run", "--port", "4000", "2", "--config=configs/dpo_tiny.py",
                 "--workdir=/tmp/w")
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line.startswith("python -m jaxpref.main --config=configs/dpo_tiny.py --workdir=/tmp/w")
        assert "coordinator_address=127.0.0.1:4000" in line and f"process_id={i}" in line and "num_processes=2" in line


def test_tpu_pod_dry_run():
    lines = _dry("launch/tpu_pod.sh", "--dry-run", "--create", "v5litepod-16", "pod", "us-central2-b",
                 "--config=configs/dpo_llama2.py", "--workdir=gs://b/r")
    assert lines[0].startswith("gcloud compute tpus tpu-vm create pod --zone=us-central2-b --accelerator-type=v5litepod-16")
    assert "--worker=all" in lines[1] and "scp" in lines[1]
    assert "ssh pod" in lines[2] and "--worker=all" in lines[2] and "jaxpref.main" in lines[2]


def test_slurm_dry_run():
    lines = _dry("launch/slurm_gpu.sbatch", "--dry-run", "--config=configs/dpo_llama2.py", "--workdir=/s/r")
    assert lines == ["srun --kill-on-bad-exit=1 python -m jaxpref.main --config.distributed.initialize=True "
                     "--config=configs/dpo_llama2.py --workdir=/s/r"]
