"""Algorithms: thin orchestration over :class:`jaxpref.train.Trainer`.

``ALGORITHMS`` maps ``config.algorithm`` to ``run(cfg, workdir) -> dict`` (real data, or the gold-reward
task when the config has a ``task`` section); :func:`synthetic_runner` gives the function that trains on
already-built gold-reward-task rows (used by :mod:`jaxpref.eval.experiment`).
"""

from jaxpref.algorithms import apo, dpo, reward_conditioned, reward_model, ropo

ALGORITHMS = {"dpo": dpo.run, "ropo": ropo.run, "reward_conditioned": reward_conditioned.run, "apo": apo.run,
              "reward_model": reward_model.run}
PLANNED: tuple[str, ...] = ()
_SYNTHETIC = {"dpo": dpo.run_on_task, "ropo": ropo.run_on_task, "reward_conditioned": reward_conditioned.run_on_task,
              "apo": apo.run_on_task}


def synthetic_runner(name: str):
    if name not in _SYNTHETIC:
        raise ValueError(f"config.algorithm={name!r} has no gold-reward-task runner; available: {sorted(_SYNTHETIC)}.")
    return _SYNTHETIC[name]
