r"""Reward-augmented relabelling (Zhang et al., "Reward-Augmented Data Enhances Direct Preference Alignment of
LLMs", ICML 2025; arXiv 2410.08067).

For a scored pair ``(x, y_w, r_w, y_l, r_l)`` :func:`reward_augment` builds two goal-conditioned pairs::

    goal g = r_w:   (x | g = r_w)   y_w > y_l       id "<id>/w"
    goal g = r_l:   (x | g = r_l)   y_l > y_w       id "<id>/l"   (swapped: the response matching the goal wins)

The swap follows from the goal-conditioned reward ``R(x, y, g) = -(g - r(x, y))^2``: under goal ``r_l`` the
response whose score *is* ``r_l`` is the better one. (The authors' no-system-role code path keeps
``y_w > y_l`` for both pairs; jaxpref implements the paper's swap.) Any direct-alignment loss then trains
on the ``2N`` relabelled pairs unchanged; at inference the prompt is conditioned on the scale's best score.

**Ties** (``r_w == r_l``): the two pairs share one conditioned prompt and contradict each other, so their
DPO terms sum to ``-log s(u) - log s(-u)`` with ``u`` the pair's reward margin -- minimised at ``u = 0``: the
pair teaches "no preference under this goal". ``ties="keep"`` (the authors' behaviour) keeps both;
``ties="drop"`` drops the row's two pairs; ``ties="error"`` raises.

**Goal text.** :data:`DEFAULT_GOAL_TEMPLATE` is the paper's wording with ``{score}`` (and ``{min}``/``{max}``
of the scale); :func:`format_score` prints ``8`` for 8.0 and ``8.5`` for 8.5. It becomes a system message for
conversational rows when the chat template has a system role (an existing system message gets the goal
prepended, then a blank line); otherwise it is prepended to the first user turn (conversational) or to the
prompt string, followed by a blank line.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from jaxpref.data.formats import DataError, PreferenceDataset

DEFAULT_GOAL_TEMPLATE = (
    "You are an assistant that generates responses for the instruction while implicitly achieving the following "
    "target scores (on a scale of {min}-{max}, where {min} is lowest and {max} is highest):\nOverall score: {score}.")
TIES = ("keep", "drop", "error")


def format_score(score: float) -> str:
    """``8.0 -> "8"``, ``8.5 -> "8.5"``, ``7.25 -> "7.25"`` (shortest repr of a float; integral values as ints)."""
    score = float(score)
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}.")
    return str(int(score)) if score.is_integer() else repr(score)


def render_goal(score: float, template: str = DEFAULT_GOAL_TEMPLATE, scale: tuple[float, float] = (1, 10)) -> str:
    """The goal text for ``score``: ``template`` with ``{score}``, ``{min}``, ``{max}`` filled in."""
    return template.format(score=format_score(score), min=format_score(scale[0]), max=format_score(scale[1]))


def condition_prompt(prompt, goal_text: str, *, system_role: bool = True):
    """``prompt`` (string or list of chat messages) conditioned on ``goal_text``.

    Strings: ``goal_text + "\\n\\n" + prompt``. Messages: a system message ``goal_text`` first when
    ``system_role`` (an existing system message becomes ``goal_text + "\\n\\n" + content``), else the
    first user turn gets ``goal_text + "\\n\\n"`` prepended. The input is not modified.
    """
    if isinstance(prompt, str):
        return f"{goal_text}\n\n{prompt}"
    messages = [dict(m) for m in prompt]
    if system_role:
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = f"{goal_text}\n\n{messages[0]['content']}"
        else:
            messages.insert(0, {"role": "system", "content": goal_text})
        return messages
    for m in messages:
        if m.get("role") == "user":
            m["content"] = f"{goal_text}\n\n{m['content']}"
            return messages
    raise DataError("a conversational prompt without a user turn cannot carry a goal without a system role.")


def _score(row: dict, key: str, scale: tuple[float, float]) -> float:
    if key not in row or row[key] is None:
        raise DataError(f"row {row.get('id', '?')!r} has no {key!r}; reward-augmented relabelling needs "
                        "score_chosen and score_rejected on every row.")
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        raise DataError(f"row {row.get('id', '?')!r}: {key}={row[key]!r} is not a number.") from None
    if not math.isfinite(value) or not scale[0] <= value <= scale[1]:
        raise DataError(f"row {row.get('id', '?')!r}: {key}={row[key]!r} is outside the score scale "
                        f"[{format_score(scale[0])}, {format_score(scale[1])}] (config reward_conditioned.scale_min/max).")
    return value


PAIRS = ("both", "goal_chosen", "goal_rejected")


def reward_augment(rows, *, template: str = DEFAULT_GOAL_TEMPLATE, ties: str = "keep", half: bool = False,
                   seed: int = 0, scale: tuple[float, float] = (1, 10), system_role: bool = True,
                   render: Callable[[float], str] | None = None, pairs: str = "both") -> PreferenceDataset:
    """Relabel scored rows into goal-conditioned rows (two per input row; see the module docstring).

    Args:
      rows: rows with ``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``.
      template: goal text template (``{score}``, ``{min}``, ``{max}``).
      ties: ``"keep"`` | ``"drop"`` | ``"error"`` for rows with equal scores.
      half: keep a random half (``seed``-determined, ``len(rows)`` of the ``2N`` pairs): the paper's same-size ablation.
      scale: ``(min, max)`` of valid scores; a score outside raises :class:`DataError`.
      system_role: whether conversational prompts take the goal as a system message.
      render: ``score -> goal text`` overriding ``template`` (e.g. a goal *token* on a synthetic task).
      pairs: ``"both"`` (the method); ``"goal_chosen"`` keeps only the ``/w`` pairs (goal = score_chosen, the
        original order: DPO with a goal in the prompt) and ``"goal_rejected"`` only the swapped ``/l`` pairs --
        the two halves as controls, ``N`` pairs each.

    Returns a :class:`PreferenceDataset` whose rows keep every input field and add ``goal`` and
    ``source_id``; ids are ``"<id>/w"`` (goal = score_chosen) and ``"<id>/l"`` (goal = score_rejected, swapped).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}.")
    suffixes = {"both": ("w", "l"), "goal_chosen": ("w",), "goal_rejected": ("l",)}[pairs]
    if scale[0] >= scale[1]:
        raise ValueError(f"scale {scale} must have min < max.")
    render = render or (lambda s: render_goal(s, template, scale))
    out = []
    for row in rows:
        r_w, r_l = _score(row, "score_chosen", scale), _score(row, "score_rejected", scale)
        if r_w == r_l:
            if ties == "drop":
                continue
            if ties == "error":
                raise DataError(f"row {row.get('id', '?')!r} has equal scores ({format_score(r_w)}); "
                                "set reward_conditioned.ties to 'keep' or 'drop'.")
        rid = row.get("id", str(len(out)))
        for suffix, goal, chosen, rejected, s_c, s_r in (
                ("w", r_w, row["chosen"], row["rejected"], r_w, r_l),
                ("l", r_l, row["rejected"], row["chosen"], r_l, r_w)):
            if suffix not in suffixes:
                continue
            new = dict(row, id=f"{rid}/{suffix}", source_id=rid, goal=goal, chosen=chosen, rejected=rejected,
                       score_chosen=s_c, score_rejected=s_r,
                       prompt=condition_prompt(row["prompt"], render(goal), system_role=system_role))
            out.append(new)
    if half:
        keep = np.sort(np.random.default_rng(seed).permutation(len(out))[: len(out) // 2])
        out = [out[i] for i in keep]
    source = getattr(getattr(rows, "report", None), "source", "<memory>")
    return PreferenceDataset(out, _report(source, len(rows), len(out)))


def condition_rows(rows, goal: float, *, template: str = DEFAULT_GOAL_TEMPLATE, scale=(1, 10),
                   system_role: bool = True, render: Callable[[float], str] | None = None) -> PreferenceDataset:
    """Every row's prompt conditioned on one ``goal`` (labels unchanged): held-out pairs "conditioned on
    the maximum", or prompts for goal-conditioned sampling."""
    render = render or (lambda s: render_goal(s, template, scale))
    text = render(goal)
    return PreferenceDataset([dict(r, prompt=condition_prompt(r["prompt"], text, system_role=system_role), goal=goal)
                              for r in rows])


def _report(source: str, n_in: int, n_out: int):
    from jaxpref.data.formats import LoadReport

    return LoadReport(source=f"reward_augment({source})", rows_read=n_in, rows_kept=n_out)


def rank_to_scale(values, scale: tuple[float, float]) -> np.ndarray:
    """Map values onto integer scores of ``scale`` by rank: the lowest gets ``min``, the highest ``max``, equal
    values equal scores (average rank), rounded to integers."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return np.full(v.shape, scale[1])
    order = v.argsort(kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size)
    for value in np.unique(v):  # ties share their mean rank
        same = v == value
        ranks[same] = ranks[same].mean()
    lo, hi = scale
    return np.floor(lo + (hi - lo) * ranks / (v.size - 1) + 0.5)
