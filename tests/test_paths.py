"""The workdir path layer: atomic local writes, and a whole run on an object-store workdir (``gs://``) with no
file written through the local file system.

The object store is fsspec's in-memory file system registered as the ``gcs`` implementation, so etils.epath
(the library orbax and jaxpref use for ``gs://``) talks to it exactly as it would to gcsfs. Orbax writes its
checkpoints with tensorstore's own GCS driver, which needs the network; that one writer is pointed at a local
directory here and is not what this test is about.
"""

import json
import os

import numpy as np
import pytest

from jaxpref import paths


@pytest.fixture
def fake_gcs(monkeypatch):
    import importlib

    from fsspec.implementations.memory import MemoryFileSystem

    registry = importlib.import_module("fsspec.registry")  # the module (``fsspec.registry`` is also a mapping)
    monkeypatch.setitem(registry._registry, "gcs", MemoryFileSystem)
    MemoryFileSystem.store.clear()
    yield MemoryFileSystem.store
    MemoryFileSystem.store.clear()


def test_local_writes_are_atomic_and_leave_no_temporaries(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "results.json"
    paths.write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    paths.append_text(str(tmp_path / "m.jsonl"), "1\n")
    paths.append_text(str(tmp_path / "m.jsonl"), "2\n")
    assert (tmp_path / "m.jsonl").read_text() == "1\n2\n"

    def fail(*a, **k):  # a crash between writing and renaming keeps the old file whole
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        paths.write_json(str(target), {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["results.json"]


def test_local_files_keep_the_umask_mode_and_file_uris_are_local_paths(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        paths.write_text(str(tmp_path / "r.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    monkeypatch.chdir(tmp_path)
    uri = f"file://{tmp_path}/run"
    paths.write_text(paths.join(uri, "a.txt"), "x")
    assert (tmp_path / "run" / "a.txt").read_text() == "x" and paths.absolute(uri) == str(tmp_path / "run")
    assert not (tmp_path / "file:").exists()


def test_npz_round_trip_and_torn_file(tmp_path):
    path = str(tmp_path / "x.npz")
    paths.save_npz(path, a=np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(paths.load_npz(path)["a"], np.arange(4))
    with open(path, "r+b") as f:
        f.truncate(30)
    with pytest.raises((ValueError, OSError)):
        paths.load_npz(path)


def test_remote_primitives(fake_gcs):
    assert not paths.is_local("gs://b/run") and paths.is_local("/tmp/x") and paths.is_local("rel/dir")
    assert paths.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
    assert paths.absolute("gs://b/run") == "gs://b/run"
    paths.append_text("gs://b/run/metrics.jsonl", "1\n")
    paths.append_text("gs://b/run/metrics.jsonl", "2\n")
    assert paths.read_text("gs://b/run/metrics.jsonl") == "1\n2\n"
    with paths.staged_dir("gs://b/run/hf_export") as local:
        assert paths.is_local(local)
        os.makedirs(os.path.join(local, "sub"))
        with open(os.path.join(local, "sub", "w.bin"), "wb") as f:
            f.write(b"xyz")
    assert paths.read_bytes("gs://b/run/hf_export/sub/w.bin") == b"xyz"
    assert not os.path.exists(local)  # the staging copy is gone
    with paths.staged_dir("gs://b/run/hf_export") as local:  # a re-export replaces the old one: no stale shard
        with open(os.path.join(local, "model.safetensors"), "wb") as f:
            f.write(b"new")
    assert not paths.exists("gs://b/run/hf_export/sub/w.bin")
    assert paths.read_bytes("gs://b/run/hf_export/model.safetensors") == b"new"


def test_a_whole_run_on_an_object_store_workdir(fake_gcs, tmp_path, monkeypatch):
    """DPO with a cached reference and an HF export, workdir ``gs://bucket/run``: every file of the run lands in
    the store; nothing appears under the current directory (the old ``./gs:/bucket/...`` bug)."""
    from jaxpref.configs_base import load_config_file
    from jaxpref.pipeline import run
    from jaxpref.train import checkpoint

    monkeypatch.chdir(tmp_path)
    local_ckpt = tmp_path / "orbax"
    original_init = checkpoint.Checkpointer.__init__

    def local_orbax(self, directory, **kwargs):
        assert directory.startswith("gs://bucket/run/"), directory
        original_init(self, str(local_ckpt / directory[len("gs://bucket/run/"):]), **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "__init__", local_orbax)
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "dpo_tiny.py"))
    cfg.data.max_rows, cfg.data.eval_fraction = 32, 0.25
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.buckets = 96, 64, (96,)
    cfg.train.num_steps, cfg.train.save_every, cfg.train.warmup_steps, cfg.train.eval_every = 2, 1, 0, 1
    cfg.train.async_checkpointing = False
    cfg.mesh.num_devices = 1
    cfg.reference.mode = "cached"
    out = run(cfg, "gs://bucket/run", progress=False)
    assert out["status"] == "done"
    stored = set(fake_gcs)
    for name in ("config.json", "run.json", "metrics.jsonl", "results.json", "hf_export/config.json",
                 "hf_export/model.safetensors"):
        assert f"gs://bucket/run/{name}" in stored, (name, sorted(stored))
    assert any(k.startswith("gs://bucket/run/ref_cache/ref_logps-") for k in stored)
    assert any(k.startswith("gs://bucket/run/tensorboard/events.out.tfevents") for k in stored)
    assert "gs://bucket/run/.lock" not in stored  # released
    records = [json.loads(x) for x in paths.read_text("gs://bucket/run/metrics.jsonl").splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["orbax"]  # no ./gs:/... directory, no stray files
    # the finished run re-run from the store keeps its results (resume reads config/run records from the store)
    again = run(cfg, "gs://bucket/run", progress=False)
    assert again["step"] == 2


def test_remote_workdir_without_a_backend_is_one_line(tmp_path):
    """``s3://`` without s3fs installed: a ConfigError naming the missing package, before any setup."""
    pytest.importorskip("etils")
    from jaxpref import errors
    from jaxpref.configs_base import load_config_file
    from jaxpref.pipeline import run

    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "dpo_tiny.py"))
    with pytest.raises(errors.ConfigError, match="s3fs"):
        run(cfg, "s3://bucket/run", progress=False)
