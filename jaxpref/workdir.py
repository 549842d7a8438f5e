"""Owning a workdir: one run at a time (a lock), and a record of what it was started with (data, model).

:func:`claim` takes ``<workdir>/.lock`` for the run (process 0 of a multi-host run; the others share it):
a second run on the same workdir is refused with one line naming the holder, and a lock left by a dead
process on this host is taken over with a warning. :func:`check_record` compares the run's data and model
fingerprints with ``<workdir>/run.json`` so that resuming a workdir with other data or weights under the
same paths is refused, not silently continued. Paths go through ``etils.epath`` (local or ``gs://``; writes via :mod:`jaxpref.paths`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket

import xxhash
from etils import epath

from jaxpref import paths
from jaxpref.errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
RECORD_FILE = "run.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claim(workdir: str):
    """Hold ``<workdir>/.lock`` for the duration of the block (process 0 only). Raises :class:`ConfigError` when
    another live run holds it."""
    import jax

    if jax.process_index() != 0:
        yield
        return
    path = epath.Path(workdir) / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    if path.exists():
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            holder = {}
        same_host = holder.get("host") == me["host"]
        if same_host and holder.get("pid") and _pid_alive(int(holder["pid"])) and holder.get("pid") != me["pid"]:
            raise ConfigError(f"{workdir} is in use by another run (pid {holder['pid']} on {holder['host']}); wait for "
                              "it to finish or use another --workdir.")
        if not same_host and holder:
            raise ConfigError(f"{workdir} is locked by a run on host {holder.get('host')} (pid {holder.get('pid')}); if "
                              f"no run is active there, delete {path} and start again.")
        log.warning("%s: taking over the lock of a finished or killed run (pid %s)", workdir, holder.get("pid"))
    paths.write_json(path, me)  # atomic: a reader never sees a torn lock
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()


def rows_fingerprint(rows) -> str:
    """A content hash of preference rows (ids, texts, scores, flip marks): changes when the data does."""
    h = xxhash.xxh3_64()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprint(model_dir: str) -> str:
    """``config.json`` content and the names and sizes of the weight files of a HF directory."""
    h = xxhash.xxh3_64()
    root = epath.Path(model_dir)
    h.update((root / "config.json").read_bytes())
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if p.name.endswith((".safetensors", ".bin", ".index.json")):
            h.update(f"{p.name}:{p.stat().length}".encode())
    return h.hexdigest()


def check_record(workdir: str, record: dict, *, resuming: bool, allow_changes: bool = False) -> None:
    """Compare ``record`` (``{"data": ..., "model": ...}`` fingerprints) with ``<workdir>/run.json`` when
    ``resuming``; refuse a changed one (unless ``allow_changes``); write the record (process 0)."""
    import jax

    path = epath.Path(workdir) / RECORD_FILE
    if resuming and path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in record if k in old and old[k] != record[k]]
        if changed and not allow_changes:
            what = " and ".join({"data": "the training data", "model": "the model weights"}.get(k, k) for k in changed)
            raise ConfigError(f"{workdir} was started with other contents: {what} changed (same config paths, "
                              "different contents). Use a new --workdir, or pass --allow_config_changes.")
    if jax.process_index() == 0:
        paths.write_json(path, record, indent=1)
