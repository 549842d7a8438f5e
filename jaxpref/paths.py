"""The one path layer for everything a run writes under its workdir: local directories or object stores.

A workdir may be a local path or a URI that ``etils.epath`` (the path library orbax uses) understands:
``gs://bucket/run`` (with ``gcsfs`` or TensorFlow installed, ``pip install -e '.[gcs]'``), ``s3://`` and so on.
Orbax writes the checkpoints there itself; every other file -- ``config.json``, ``run.json``, ``.lock``,
``metrics.jsonl``, ``results.json``, TensorBoard events, the reference-log-prob cache, ROPO's and APO's round
records and the Hugging Face / PEFT exports -- goes through the functions below, never through ``open`` or
``os.makedirs`` on a workdir path.

Semantics that differ between the two kinds of storage, and why:

* :func:`write_bytes` / :func:`write_text` are atomic: on a local disk through a temporary file renamed over
  the target (a kill never leaves a torn file); an object store replaces whole objects atomically already.
* :func:`append_text` appends on a local disk; an object store has no append, so the object is read and
  rewritten (fine for ``metrics.jsonl``-sized files, which is the only use).
* :func:`staged_dir` hands writers that only take local paths (``save_pretrained``, ``safetensors``) a local
  directory and uploads it afterwards when the destination is remote.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from typing import Iterator

from etils import epath

_LOCAL_SCHEMES = ("", "file")


def is_local(path) -> bool:
    """Whether ``path`` is on this host's file system (no ``scheme://`` prefix other than ``file://``)."""
    text = os.fspath(path) if not isinstance(path, str) else path
    return "://" not in text or text.split("://", 1)[0] in _LOCAL_SCHEMES


def _local(path) -> str:
    """A local path as a plain file-system path (``file://`` stripped)."""
    text = os.fspath(path)
    return text[len("file://"):] if text.startswith("file://") else text


def as_path(path) -> epath.Path:
    """``path`` as an :class:`etils.epath.Path` (local or remote)."""
    return epath.Path(path)


def join(root, *parts: str) -> str:
    """``root/part/...`` as a string; keeps ``gs://`` intact (``os.path.join`` would too, ``abspath`` would not)."""
    return os.fspath(epath.Path(root).joinpath(*parts)) if not is_local(root) else os.path.join(_local(root), *parts)


def absolute(path) -> str:
    """An absolute local path, or the URI unchanged (orbax wants absolute local directories)."""
    return os.path.abspath(_local(path)) if is_local(path) else os.fspath(path)


def makedirs(path) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path) -> bool:
    return epath.Path(path).exists()


def read_bytes(path) -> bytes:
    return epath.Path(path).read_bytes()


def read_text(path) -> str:
    return epath.Path(path).read_text()


def read_json(path):
    return json.loads(read_text(path))


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating its parent directory."""
    if not is_local(path):
        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)  # an object appears whole or not at all
        return
    target = epath.Path(_local(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.fspath(target.parent), prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the run's files from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(target))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, **dump_kwargs) -> None:
    write_text(path, json.dumps(obj, **dump_kwargs))


def append_text(path, text: str) -> None:
    """Append ``text`` to ``path`` (created when missing). Remote: read and rewrite (object stores cannot append)."""
    if is_local(path):
        target = epath.Path(_local(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a") as f:
            f.write(text)
        return
    target = epath.Path(path)
    old = target.read_text() if target.exists() else ""
    write_text(path, old + text)


def remove(path, *, missing_ok: bool = True) -> None:
    target = epath.Path(path)
    if missing_ok and not target.exists():
        return
    target.unlink()


def rmtree(path) -> None:
    target = epath.Path(path)
    if target.exists():
        target.rmtree()


def save_npz(path, **arrays) -> None:
    """``numpy.savez`` to ``path``, atomically (see :func:`write_bytes`)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_npz(path) -> dict:
    """The arrays of an ``.npz`` written by :func:`save_npz` (raises ``OSError``/``ValueError`` when torn)."""
    import zipfile

    import numpy as np

    try:
        with np.load(io.BytesIO(read_bytes(path))) as f:
            return {k: f[k] for k in f.files}
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: {e}") from None


@contextlib.contextmanager
def staged_dir(path) -> Iterator[str]:
    """A local directory to write ``path``'s files into: ``path`` itself when local; otherwise a temporary
    directory that replaces ``path`` when the block ends without an error (the old contents are removed
    first, so no stale weight shard of an earlier export survives next to the new index; files are
    streamed, never held in memory whole)."""
    if is_local(path):
        os.makedirs(_local(path), exist_ok=True)
        yield _local(path)
        return
    tmp = tempfile.mkdtemp(prefix="jaxpref-stage-")
    try:
        yield tmp
        dest = epath.Path(path)
        rmtree(dest)
        for root, _, files in os.walk(tmp):
            rel = os.path.relpath(root, tmp)
            for name in sorted(files, key=lambda n: n.endswith(".json")):  # weights first, configs last
                target = dest if rel == "." else dest / rel
                target.mkdir(parents=True, exist_ok=True)
                with open(os.path.join(root, name), "rb") as src, (target / name).open("wb") as out:
                    shutil.copyfileobj(src, out, 16 << 20)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _EpathRecordWriter:
    """A TensorBoard event file on any epath storage: buffered, the whole object rewritten on each flush."""

    def __init__(self, path: str):
        self.path, self.buffer, self.closed = path, io.BytesIO(), False

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True


class _EpathRecordWriterFactory:
    def open(self, path: str) -> _EpathRecordWriter:
        return _EpathRecordWriter(path)

    def directory_check(self, path: str) -> None:
        makedirs(path)


def tensorboard_writer(logdir: str, **kwargs):
    """A ``tensorboardX.SummaryWriter`` for ``logdir``; remote logdirs write through epath (tensorboardX's own
    gs:// writer needs ``google-cloud-storage``)."""
    from tensorboardX import SummaryWriter

    if not is_local(logdir):
        from tensorboardX import record_writer

        record_writer.register_writer_factory(logdir.split("://", 1)[0], _EpathRecordWriterFactory())
    return SummaryWriter(logdir, **kwargs)
