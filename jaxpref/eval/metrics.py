"""Evaluation metrics for preference-trained policies.

* :func:`sampled_gold_reward`: mean gold reward of greedy and temperature-1 samples on held-out prompts.
* :func:`win_rate`: fraction of prompts where the policy's sample beats the reference's (ties count 1/2).
* :func:`sampled_kl`: ``E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)]`` from temperature-1 samples -- an
  unbiased estimate of ``KL(pi || pi_ref)``, so reward gains bought with collapse show up.
* :func:`flag_precision_recall`: how well a filter's flagged pairs match the recorded label flips.
* :func:`mean_std`: aggregate a metric over seeds.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax.numpy as jnp
import numpy as np

from jaxpref.logprobs import sequence_logprobs, token_logprobs


def sampled_gold_reward(task, model, params, prompts: np.ndarray, *, seed: int = 0, temperature: float = 1.0,
                        prefix=()) -> dict:
    """``{"gold_reward_greedy", "gold_reward_sampled", "rewards_sampled"}`` on ``prompts`` (each preceded by
    ``prefix`` tokens, e.g. a goal token, which the gold reward does not see)."""
    from jaxpref.eval.synthetic import sample

    greedy = sample(task, model, params, prompts, greedy=True, seed=seed, prefix=prefix)
    sampled = sample(task, model, params, prompts, temperature=temperature, seed=seed, prefix=prefix)
    r_greedy = [task.gold_reward(p, s[0]) for p, s in zip(prompts, greedy)]
    r_sampled = [task.gold_reward(p, s[0]) for p, s in zip(prompts, sampled)]
    return {"gold_reward_greedy": float(np.mean(r_greedy)), "gold_reward_sampled": float(np.mean(r_sampled)),
            "rewards_sampled": r_sampled, "rewards_greedy": r_greedy}


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """``mean(1[r_pi > r_ref] + 0.5 * 1[r_pi == r_ref])`` over paired prompts."""
    a, b = np.asarray(policy_rewards, float), np.asarray(reference_rewards, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"win_rate needs two equal-length non-empty reward lists, got {a.shape} and {b.shape}.")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def sequence_logps_of(model, params, prompts_with_bos: Sequence[Sequence[int]],
                      responses: Sequence[Sequence[int]]) -> np.ndarray:
    """Summed log-probs of each response (exactly its tokens) given its prompt, one teacher-forced pass."""
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


def sampled_kl(task, model, params, ref_params, prompts: np.ndarray, *, seed: int = 0, num_samples: int = 1,
               prefix=()) -> float:
    """Monte-Carlo ``KL(pi || pi_ref)``: mean of ``log pi(y|x) - log pi_ref(y|x)`` over ``y ~ pi`` (temperature 1).
    ``prefix`` (a goal token) conditions the policy only: the divergence of what is deployed from ``pi_ref``."""
    from jaxpref.eval.synthetic import BOS, sample

    # Score exactly what was sampled (EOS included when emitted; a response cut at max_new_tokens has none).
    samples = sample(task, model, params, prompts, num_samples=num_samples, seed=seed, keep_eos=True, prefix=prefix)
    flat_prompts = [list(p) for p, ss in zip(prompts, samples) for _ in ss]
    flat = [s for ss in samples for s in ss]
    pol = sequence_logps_of(model, params, [[BOS] + list(prefix) + p for p in flat_prompts], flat)
    ref = sequence_logps_of(model, ref_params, [[BOS] + p for p in flat_prompts], flat)
    return float(np.mean(pol - ref))


def flag_precision_recall(flagged_ids: Iterable[str], flipped_ids: Iterable[str]) -> dict:
    """Precision = flipped among flagged; recall = flagged among flipped (1.0 when the set is empty)."""
    flagged, flipped = set(flagged_ids), set(flipped_ids)
    hit = len(flagged & flipped)
    return {"flag_precision": hit / len(flagged) if flagged else 1.0,
            "flag_recall": hit / len(flipped) if flipped else 1.0,
            "num_flagged": len(flagged), "num_flipped": len(flipped)}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std())
