"""Algorithms: generic functions ``train(runtime, inputs, workdir, *, progress) -> result dict``.

Each takes the run's :class:`~jaxpref.train.runtime.Runtime` and a task's :class:`~jaxpref.tasks.TaskInputs`
(rows, starting params, prompts, evaluation callback); none knows which task feeds it.
:func:`jaxpref.pipeline.run` dispatches on ``config.algorithm`` through :data:`ALGORITHMS`.
"""

from jaxpref.algorithms import apo, dpo, reward_conditioned, reward_model, ropo

ALGORITHMS = {"dpo": dpo, "ropo": ropo, "reward_conditioned": reward_conditioned, "apo": apo,
              "reward_model": reward_model}
