"""Task adapters: what feeds an algorithm.

An adapter turns the config (and, for experiments, prebuilt task data) into a :class:`TaskInputs`: the
train and eval rows, the starting params, the prompts an algorithm samples from, and an ``evaluate``
callback for task-specific metrics. The algorithms never know which task they run on:

* :mod:`jaxpref.tasks.real` -- real preference data from ``config.data`` (the CLI's default);
* :mod:`jaxpref.tasks.gold` -- the gold-reward task (``config.task.name = "gold"``), whose exact reward
  measures what a policy learned.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass
class TaskInputs:
    """What an algorithm trains on.

    * ``rows`` / ``eval_rows``: train and held-out preference rows.
    * ``params``: the starting policy params (host arrays); ``model``: its definition when the task defines
      one (the gold task's tiny policy), else None (the runtime builds ``config.model``).
    * ``tokenizer``: a tokenizer the task defines (None: the runtime loads ``config.tokenizer``).
    * ``evaluate(params, **context) -> dict``: task metrics of a trained policy (None for real data).
      ``context`` may hold ``rows`` (the training rows), ``clean_accuracy``, ``goal`` (the reward-conditioned
      inference goal).
    * ``goal_render(score) -> str``: how a goal score conditions a prompt (None: the config's template).
    * ``goal_scores(rows) -> rows``: per-response scores for reward-conditioned DPO when the task has its
      own (None: the rows' ``score_chosen``/``score_rejected``).
    * APO: ``rm_prompts`` (``[{"id", "prompt", "golden"}]``), ``policy_prompts`` (``[{"id", "prompt"}]``),
      ``golden_eval`` (held-out prompts with golden answers).
    * ``gold_reward(prompt, response) -> float``: the task's true reward of a response text, when it has one
      (the gold-reward task): APO then reports how its reward model ranks the policy's own samples against it.
    """

    rows: Any
    eval_rows: Any = None
    params: Any = None
    model: Any = None
    tokenizer: Any = None
    evaluate: Callable[..., dict] | None = None
    goal_render: Callable[[float], str] | None = None
    goal_scores: Callable[[Any], Any] | None = None
    rm_prompts: list | None = None
    policy_prompts: list | None = None
    golden_eval: list | None = None
    gold_reward: Callable[[Any, str], float] | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # recorded in results.json (e.g. flip counts)
