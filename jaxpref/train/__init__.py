"""Training core: TrainState and optimizer, jitted steps, checkpoints, reference cache, logging, Trainer."""

from jaxpref.train.state import TrainState, learning_rate_schedule, make_optimizer
from jaxpref.train.step import StepFns, dpo_pair_loss, sequence_logps
from jaxpref.train.trainer import ConfigError, Trainer

__all__ = ["ConfigError", "StepFns", "TrainState", "Trainer", "dpo_pair_loss", "learning_rate_schedule",
           "make_optimizer", "sequence_logps"]
