"""A 2-process jax.distributed run on CPU (gloo collectives): both processes agree, only process 0 logs."""

import json
import os
import socket
import subprocess
import sys

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_agree(tmp_path):
    port = _free_port()
    worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, worker, str(i), str(port), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    assert {r["process"] for r in results} == {0, 1}
    assert results[0]["step"] == results[1]["step"] == 3
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3]  # written once (process 0 only), not twice
    assert os.path.isdir(tmp_path / "checkpoints" / "3")
