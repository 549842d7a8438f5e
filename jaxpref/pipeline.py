"""One path from a config to a result: task adapter -> runtime -> algorithm -> results.json.

``python -m jaxpref.main``, the experiment runner and the comparison runner all call :func:`run`, so the
evidence in BENCHMARKS.md comes from the code path users run.
"""

from __future__ import annotations

import logging
import os
import time

from jaxpref.configs_base import check_resume, validate, write_run_config
from jaxpref.errors import ConfigError

log = logging.getLogger(__name__)


def task_inputs(cfg, *, task_data=None, progress: bool = False):
    """The :class:`~jaxpref.tasks.TaskInputs` of ``config.task.name`` (real data by default)."""
    if cfg.task.name == "gold":
        from jaxpref.tasks import gold

        return gold.inputs(cfg, task_data, progress=progress)
    from jaxpref.tasks import real

    return real.inputs(cfg)


def run(cfg, workdir: str, *, task_data=None, progress: bool = True, allow_config_changes: bool = False) -> dict:
    """Validate ``cfg``, claim ``workdir`` (refusing to resume it with a config that trains something else), build
    the task's inputs and the runtime, run ``config.algorithm`` and write ``<workdir>/results.json``.

    ``task_data``: prebuilt gold-reward-task data for this seed (experiments share it across runs)."""
    from jaxpref.algorithms import ALGORITHMS
    from jaxpref.train.logging import write_results
    from jaxpref import workdir as W
    from jaxpref.train.runtime import Runtime, maybe_initialize_distributed, model_dir

    validate(cfg)
    maybe_initialize_distributed(cfg)  # before anything touches a JAX backend (the workdir lock asks for the process index)
    _check_writable(workdir)
    with W.claim(workdir):
        resuming = check_resume(workdir, cfg, allow_changes=allow_config_changes) is not None
        write_run_config(workdir, cfg)
        algorithm = ALGORITHMS[cfg.algorithm]
        t0 = time.time()
        inputs = task_inputs(cfg, task_data=task_data, progress=progress)
        runtime = Runtime.build(cfg, model=inputs.model, tokenizer=inputs.tokenizer)
        record = {"data": W.rows_fingerprint(inputs.rows)}
        if cfg.model.hf_dir and inputs.model is None:
            record["model"] = W.model_fingerprint(model_dir(cfg))
        W.check_record(workdir, record, resuming=resuming, allow_changes=allow_config_changes)
        if inputs.params is None:
            inputs.params = runtime.initial_params()
        log.info("%s: %d train rows, mesh %s, workdir %s%s", cfg.algorithm, len(inputs.rows), dict(runtime.mesh.shape),
                 workdir, " (resuming)" if resuming else "")
        result = algorithm.train(runtime, inputs, workdir, progress=progress)
        result.update(inputs.extra, train_seconds=time.time() - t0, config=_config_record(cfg))
        write_results(workdir, result)
    return result


def _config_record(cfg) -> dict:
    """The resolved config and the git commit of the code, stored with every result."""
    import subprocess

    from jaxpref.configs_base import config_to_dict

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=os.path.dirname(__file__),
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"resolved": config_to_dict(cfg), "git_commit": commit, "git_dirty": dirty}


def _check_writable(workdir: str) -> None:
    """Fail fast (before any model, data or reference is set up) when the workdir cannot be written."""
    from etils import epath

    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe.{os.getpid()}"  # one per process: hosts of a run share the workdir
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} is not writable ({e.strerror or e}); choose another directory.") from None
    except ImportError as e:  # fsspec's "install gcsfs/s3fs to access ..." for an object-store URI
        raise ConfigError(f"--workdir={workdir}: {e} (for gs:// workdirs: pip install -e '.[gcs]').") from None
