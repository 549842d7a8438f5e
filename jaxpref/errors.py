"""The one exception type that means "the user's input is wrong".

``python -m jaxpref.main`` (and the other CLIs) print a :class:`UserError` as a single ``error:`` line and
exit with status 2; every other exception is a bug in jaxpref and keeps its traceback. Raise a subclass
for bad data (:class:`jaxpref.data.DataError`), unusable checkpoints (:class:`jaxpref.models.CheckpointError`)
and bad configuration (:class:`ConfigError`); the message names the file, row or config key and says what
would fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (data, config, files): printed as one line by the CLIs, never a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


class Preempted(Exception):
    """Raised (and caught by the CLI) when SIGTERM/SIGINT stopped a run after saving what it needs to resume.

    Not an error: the run resumes from its workdir. The CLI exits with :data:`EXIT_PREEMPTED`."""


EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" -- launchers restart the same command
