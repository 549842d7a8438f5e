"""Entry point: ``python -m jaxpref.main --config=configs/NAME.py --workdir=DIR [--config.x.y=value ...]``.

``config.algorithm`` selects dpo / ropo / reward_conditioned / apo. Configuration and data errors print
one ``error:`` line (no traceback) and exit with status 2; a non-finite loss exits with status 3.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, exports and results.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Dispatch on ``cfg.algorithm``; raises ``ValueError`` for an unknown name.

    A config with a ``task`` section runs on the gold-reward task (one seed, ``data.flip_rate``)."""
    from jaxpref.algorithms import ALGORITHMS, PLANNED

    name = cfg.get("algorithm", "dpo")
    if name not in ALGORITHMS:
        hint = " (not implemented yet)" if name in PLANNED else ""
        raise ValueError(f"config.algorithm={name!r}{hint}; available: {sorted(ALGORITHMS)}.")
    if cfg.get("task"):
        from jaxpref.eval import experiment

        td = experiment.build_task_data(cfg, cfg.seed, progress=progress)
        return experiment.run_one(cfg, td, cfg.data.get("flip_rate", 0.0), cfg.seed, workdir, progress=progress)
    return ALGORITHMS[name](cfg, workdir, progress=progress)


def main(argv) -> int:
    del argv
    from jaxpref.checkpoint_errors import user_errors

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    cfg = _CONFIG.value
    if cfg is None or not _WORKDIR.value:
        print("error: pass --config=configs/NAME.py and --workdir=DIR", file=sys.stderr)
        return 2
    try:
        result = run(cfg, _WORKDIR.value, progress=not _QUIET.value)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    step = result.get("step")
    where = f" at step {step}" if step is not None else ""
    print(f"{cfg.algorithm}: {result.get('status', 'done')}{where}; results in {_WORKDIR.value}/results.json")
    return 0


def entry() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    entry()
