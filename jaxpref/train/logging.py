"""Metrics to TensorBoard (tensorboardX) and a JSONL file, written by process 0 only."""

from __future__ import annotations

import json
import time

import jax

from jaxpref import paths


class MetricLogger:
    """``log(step, metrics)`` appends one JSON line to ``<workdir>/metrics.jsonl`` and writes TensorBoard
    scalars under ``<workdir>/tensorboard``; on processes other than 0 it does nothing."""

    #: seconds between writes of buffered records on an object store (a whole-object rewrite each time)
    REMOTE_FLUSH_SECONDS = 30.0

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._pending: list[str] = []
        self._last_write = time.monotonic()
        self.workdir = workdir
        self.path = paths.join(workdir, "metrics.jsonl")
        self._writer = None
        if self.enabled:
            paths.makedirs(workdir)
            self._writer = paths.tensorboard_writer(paths.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run repeats them) from metrics.jsonl, and start
        TensorBoard's event stream over from ``step + 1`` (tensorboardX's ``purge_step``)."""
        if not self.enabled:
            return
        self._write_pending()
        records = read_metrics(self.workdir)
        kept = [r for r in records if r["step"] <= step]
        if len(kept) != len(records):
            paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._writer.close()
        self._writer = paths.tensorboard_writer(paths.join(self.workdir, "tensorboard"), purge_step=step + 1)

    def log(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        line = json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n"
        if paths.is_local(self.path):
            paths.append_text(self.path, line)
        else:  # an object store rewrites the whole object per append: buffer, write every REMOTE_FLUSH_SECONDS
            self._pending.append(line)
            if time.monotonic() - self._last_write >= self.REMOTE_FLUSH_SECONDS:
                self._write_pending()
        for k, v in clean.items():
            self._writer.add_scalar(k, v, int(step))

    def _write_pending(self) -> None:
        if self._pending:
            paths.append_text(self.path, "".join(self._pending))
            self._pending = []
        self._last_write = time.monotonic()

    def flush(self) -> None:
        self._write_pending()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self._write_pending()
        if self._writer is not None:
            self._writer.close()


def read_metrics(workdir: str) -> list[dict]:
    """The JSONL records written by :class:`MetricLogger`."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return []
    return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


def write_results(workdir: str, result: dict) -> None:
    """Write ``<workdir>/results.json`` (process 0 only; floats from numpy/jax are converted)."""
    if jax.process_index() != 0:
        return
    paths.write_json(paths.join(workdir, "results.json"), result, indent=2, default=float)
