"""Preemption: SIGTERM/SIGINT anywhere in a run saves what is needed and stops with a distinct exit status.

The CLI installs :func:`handle_signals` for the whole run (single-process runs; a multi-process run uses
JAX's preemption sync point instead, see :func:`requested`). A signal only sets a flag; the training loop
checks it after every optimizer step (saves a checkpoint, returns ``status="preempted"``), and the
algorithms call :func:`raise_if_requested` between phases (a ROPO w-step, rejection sampling, an APO
phase), so no round or phase marker is ever written for unfinished work. :class:`jaxpref.errors.Preempted`
then unwinds to the CLI, which exits with :data:`jaxpref.errors.EXIT_PREEMPTED` (75); re-running the same
command resumes to the result an uninterrupted run gives.
"""

from __future__ import annotations

import logging
import signal
import threading

from jaxpref.errors import Preempted

log = logging.getLogger(__name__)
_requested: list[int] = []


def _on_signal(signum, frame):
    del frame
    if not _requested:
        log.warning("signal %d: finishing this step, saving, then stopping (exit status 75; re-run to resume)", signum)
    _requested.append(signum)


def handle_signals() -> dict:
    """Route SIGTERM and SIGINT to the preemption flag (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def requested(step: int | None = None) -> bool:
    """Whether to stop after this step. Multi-process runs must stop at the *same* step on every host, so there
    (``step`` given) the answer is JAX's preemption sync point: ``jax.distributed.initialize`` installs its own
    SIGTERM handler, and every process learns of a signal received by any of them at one agreed step."""
    if step is not None:
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # the coordination service runs without a preemption sync manager
                return bool(_requested)
    return bool(_requested)


def clear() -> None:
    """Forget a handled request (tests; a new run in the same process)."""
    _requested.clear()


def raise_if_requested(where: str = "") -> None:
    """Raise :class:`Preempted` when a signal arrived; ``where`` names the point for the log."""
    if _requested:
        raise Preempted(f"preempted{' ' + where if where else ''}; re-run the same command to resume")
