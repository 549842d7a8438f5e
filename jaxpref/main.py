"""Entry point: ``python -m jaxpref.main --config=configs/NAME.py --workdir=DIR [--config.x.y=value ...]``.

``config.algorithm`` selects dpo / ropo / reward_conditioned / apo / reward_model; ``config.task.name``
the task adapter (real data by default). Exit status: 0 done; 2 a user error (bad config, data, files:
one ``error:`` line, no traceback); 3 a non-finite loss (the message names the last good checkpoint);
75 preempted by SIGTERM/SIGINT after saving (re-run the same command to resume). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, exports and results.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars and no INFO lines (warnings and errors only).")
_ALLOW_CHANGES = flags.DEFINE_bool(
    "allow_config_changes", False,
    "Resume a workdir although the config changes what is trained (e.g. a lower learning rate after a NaN stop).")


def setup_logging(quiet: bool) -> None:
    """jaxpref's INFO lines on stderr (hidden by ``--quiet``); libraries (orbax, absl) at WARNING."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("jaxpref").setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv) -> int:
    del argv
    from jaxpref import errors
    from jaxpref.pipeline import run
    from jaxpref.train import preemption

    setup_logging(_QUIET.value)
    cfg = _CONFIG.value
    if cfg is None or not _WORKDIR.value:
        print("error: pass --config=configs/NAME.py and --workdir=DIR", file=sys.stderr)
        return errors.EXIT_USER_ERROR
    previous = preemption.handle_signals()
    try:
        result = run(cfg, _WORKDIR.value, progress=not _QUIET.value, allow_config_changes=_ALLOW_CHANGES.value)
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_USER_ERROR
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_NONFINITE
    except errors.Preempted as e:
        print(f"{cfg.algorithm}: {e}", file=sys.stderr)
        return errors.EXIT_PREEMPTED
    finally:
        preemption.restore_signals(previous)
    step = result.get("step")
    where = f" at step {step}" if step is not None else ""
    print(f"{cfg.algorithm}: {result.get('status', 'done')}{where}; results in {_WORKDIR.value}/results.json")
    return 0


def entry() -> None:
    from jaxpref.cli import parse_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
