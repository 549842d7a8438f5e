"""Generic evaluation metrics (task-specific ones live with their task, e.g. :mod:`jaxpref.tasks.synthetic`).

* :func:`win_rate`: fraction of prompts where the policy's sample beats the reference's (ties count 1/2).
* :func:`response_logprobs`: summed log-probs of given responses under a model (one teacher-forced pass).
* :func:`flag_precision_recall` / :func:`flag_auroc`: how well a filter's flags match recorded label flips.
* :func:`best_of_k_agreement`: how a scorer (a reward model) ranks each prompt's own samples against a gold reward.
* :func:`mean_std`: aggregate a metric over seeds (sample standard deviation).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax.numpy as jnp
import numpy as np

from jaxpref.logprobs import sequence_logprobs, token_logprobs


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """``mean(1[r_pi > r_ref] + 0.5 * 1[r_pi == r_ref])`` over paired prompts."""
    a, b = np.asarray(policy_rewards, float), np.asarray(reference_rewards, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"win_rate needs two equal-length non-empty reward lists, got {a.shape} and {b.shape}.")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def response_logprobs(model, params, prompts_with_bos: Sequence[Sequence[int]],
                      responses: Sequence[Sequence[int]]) -> np.ndarray:
    """Summed log-probs ``[N]`` of each response (exactly its tokens) given its prompt, one teacher-forced pass
    (:func:`jaxpref.logprobs.sequence_logprobs` over the response positions)."""
    seqs = [list(p) + list(r) for p, r in zip(prompts_with_bos, responses)]
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    score = np.zeros((len(seqs), width), np.int32)
    for i, (s, p) in enumerate(zip(seqs, prompts_with_bos)):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
        score[i, len(p):len(s)] = 1
    logits = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    per_token = token_logprobs(logits[:, :-1], jnp.asarray(ids[:, 1:]))
    total, _, _ = sequence_logprobs(per_token, jnp.asarray(score[:, 1:]))
    return np.asarray(total)


def flag_precision_recall(flagged_ids: Iterable[str], flipped_ids: Iterable[str]) -> dict:
    """Precision = flipped among flagged; recall = flagged among flipped. Each is NaN when its denominator is
    empty (nothing flagged, e.g. a filter ratio of 0; nothing flipped, e.g. clean data): undefined, not 0 or 1."""
    flagged, flipped = set(flagged_ids), set(flipped_ids)
    hit = len(flagged & flipped)
    return {"flag_precision": hit / len(flagged) if flagged else float("nan"),
            "flag_recall": hit / len(flipped) if flipped else float("nan"),
            "num_flagged": len(flagged), "num_flipped": len(flipped)}


def flag_auroc(scores: Sequence[float], flipped: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` (higher = more suspect, e.g. a pair's loss) for finding the
    flipped pairs: the probability that a random flipped pair scores above a random clean one (ties 1/2).
    NaN when either class is empty."""
    s, y = np.asarray(scores, float), np.asarray(flipped, bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def best_of_k_agreement(scores: Sequence[Sequence[float]], gold: Sequence[Sequence[float]]) -> dict:
    """How well ``scores`` (e.g. a reward model's) rank each prompt's candidates by their ``gold`` reward -- what
    best-of-K selection relies on. Per prompt, lists of equal length (one entry per candidate):

    * ``rm_sample_agreement``: over all candidate pairs of a prompt whose gold rewards differ, the fraction the
      scorer orders the same way (a scorer tie counts 1/2), pooled over prompts (NaN when no pair differs);
    * ``best_of_k_gold``: mean gold reward of the scorer's top candidate (first on ties);
    * ``mean_sample_gold`` / ``oracle_best_of_k_gold``: mean gold reward of all candidates / of the gold-best one.
    """
    agree = total = 0.0
    picked, mean, oracle = [], [], []
    for s, g in zip(scores, gold):
        s, g = np.asarray(s, float), np.asarray(g, float)
        if s.shape != g.shape or s.size == 0:
            raise ValueError(f"best_of_k_agreement: scores {s.shape} and gold rewards {g.shape} per prompt must match.")
        i, j = np.triu_indices(s.size, 1)
        differ = g[i] != g[j]
        same_order = np.sign(s[i] - s[j]) == np.sign(g[i] - g[j])
        agree += float((same_order & differ).sum() + 0.5 * ((s[i] == s[j]) & differ).sum())
        total += float(differ.sum())
        picked.append(g[int(np.argmax(s))])
        mean.append(g.mean())
        oracle.append(g.max())
    return {"rm_sample_agreement": agree / total if total else float("nan"),
            "best_of_k_gold": float(np.mean(picked)), "mean_sample_gold": float(np.mean(mean)),
            "oracle_best_of_k_gold": float(np.mean(oracle))}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (``ddof=1``; 0 for a single value) over seeds."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
