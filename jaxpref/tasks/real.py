"""Real preference data from ``config.data``: the adapter behind ``python -m jaxpref.main``."""

from __future__ import annotations

import logging

import numpy as np

from jaxpref import data as D
from jaxpref.tasks import TaskInputs

log = logging.getLogger(__name__)


def resolve_data_path(path: str) -> str:
    """``"hh"`` is the shipped Anthropic HH harmless-base sample."""
    return D.SHIPPED_HH if path in ("hh", "hh_harmless_test") else path


def load_rows(cfg) -> tuple[D.PreferenceDataset, D.PreferenceDataset | None]:
    """Train and (optional) eval rows from ``config.data``: ``train_path``, ``format``, ``skip_invalid``,
    ``max_rows``, ``eval_path`` or ``eval_fraction`` (a seeded split of the train file), ``flip_rate``."""
    dc = cfg.data
    rows = D.load_preferences(resolve_data_path(dc.train_path), format=dc.format, skip_invalid=dc.skip_invalid,
                              max_rows=dc.max_rows)
    eval_rows = None
    if dc.eval_path:
        eval_rows = D.load_preferences(resolve_data_path(dc.eval_path), format=dc.format, skip_invalid=dc.skip_invalid)
    elif not dc.eval_fraction and ":" not in dc.train_path and D.has_test_split(resolve_data_path(dc.train_path)):
        eval_rows = D.load_preferences(resolve_data_path(dc.train_path), format=dc.format,
                                       skip_invalid=dc.skip_invalid, split="test")
        log.info("eval split: the 'test' split of %s (%d rows)", dc.train_path, len(eval_rows))
    elif dc.eval_fraction:
        perm = np.random.default_rng(cfg.seed).permutation(len(rows))
        n_eval = max(1, int(round(dc.eval_fraction * len(rows))))
        eval_rows = D.PreferenceDataset([rows[i] for i in sorted(perm[:n_eval])], rows.report)
        rows = D.PreferenceDataset([rows[i] for i in sorted(perm[n_eval:])], rows.report)
    if dc.flip_rate:
        rows, flipped = D.flip_labels(rows, dc.flip_rate, seed=cfg.seed)
        log.info("flipped %d of %d train labels (data.flip_rate=%g)", int(flipped.sum()), len(rows), dc.flip_rate)
    return rows, eval_rows


def golden_prompts(cfg, rows, eval_rows):
    """APO's prompts from real rows: golden answers from ``apo.golden_field``; a seeded
    ``apo.policy_prompt_fraction`` of the prompts feeds the policy step."""
    field = cfg.apo.golden_field
    missing = [r["id"] for r in rows if not isinstance(r.get(field), str) or not r.get(field).strip()]
    if missing:
        raise D.DataError(f"APO needs a golden answer in field {field!r} of every row; {len(missing)} rows lack it "
                          f"(first: {missing[0]!r}). Set config.apo.golden_field.")
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    n_policy = max(1, int(round(cfg.apo.policy_prompt_fraction * len(rows))))
    policy_prompts = [{"id": rows[i]["id"], "prompt": rows[i]["prompt"]} for i in order[:n_policy]]
    rm_prompts = [{"id": r["id"], "prompt": r["prompt"], "golden": r[field]} for r in rows]
    golden_eval = ([{"id": r["id"], "prompt": r["prompt"], "golden": r[field]} for r in eval_rows if r.get(field)]
                   if eval_rows is not None else None)
    return rm_prompts, policy_prompts, golden_eval


def inputs(cfg) -> TaskInputs:
    """Rows from ``config.data`` and APO's prompts (the data is read and checked before any model is built;
    the runtime loads the params of ``config.model``)."""
    rows, eval_rows = load_rows(cfg)
    reports = {"train": rows.report.to_dict(), **({"eval": eval_rows.report.to_dict()} if eval_rows is not None else {})}
    out = TaskInputs(rows=rows, eval_rows=eval_rows, extra={"data": reports})
    if cfg.algorithm == "apo":
        out.rm_prompts, out.policy_prompts, out.golden_eval = golden_prompts(cfg, rows, eval_rows)
    return out
