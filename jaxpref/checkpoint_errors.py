"""The exception types that mean "the user's input is wrong" (printed as one line by the CLI)."""


def user_errors() -> tuple[type[BaseException], ...]:
    from jaxpref.data import DataError
    from jaxpref.models import CheckpointError
    from jaxpref.train import ConfigError

    return (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError)
