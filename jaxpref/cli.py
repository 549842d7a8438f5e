"""Shared command-line plumbing of jaxpref's entry points (``jaxpref.main``, ``jaxpref.aot``)."""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad ``--config.*`` override (a misspelt key, a value of the wrong type) as one
    ``error:`` line and exit status 2 instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        from jaxpref.configs_base import unknown_key_message

        message = None
        for arg in argv[1:]:
            if arg.startswith("--config."):
                key = arg[len("--config."):].split("=", 1)[0]
                message = unknown_key_message(key)
                if message is None and isinstance(e, (AttributeError, KeyError)) and key.rsplit(".", 1)[-1] in str(e):
                    message = (f"cannot set config.{key} from the command line: the config file does not define "
                               "it, and overrides only change existing keys; set it in the config file.")
                if message:
                    break
        print(f"error: {message or str(e).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
