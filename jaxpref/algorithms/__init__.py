"""Algorithms: thin orchestration over :class:`jaxpref.train.Trainer`.

``ALGORITHMS`` maps ``config.algorithm`` to a ``run(cfg, workdir) -> dict`` function.
"""

from jaxpref.algorithms import dpo

ALGORITHMS = {"dpo": dpo.run}
PLANNED = ("ropo", "reward_conditioned", "apo")
