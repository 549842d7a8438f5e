"""Training core: runtime (built once, no data needed), TrainState and optimizer, jitted steps over a typed
batch, the training loop, checkpoints, reference cache, logging, and the Trainer session."""

from jaxpref.errors import ConfigError
from jaxpref.train.loop import FitResult, fit
from jaxpref.train.runtime import Runtime
from jaxpref.train.state import TrainState, learning_rate_schedule, make_optimizer
from jaxpref.train.step import Batch, StepFns, dpo_pair_loss, pair_logprobs
from jaxpref.train.trainer import Trainer

__all__ = ["Batch", "ConfigError", "FitResult", "Runtime", "StepFns", "TrainState", "Trainer", "dpo_pair_loss", "fit",
           "learning_rate_schedule", "make_optimizer", "pair_logprobs"]
