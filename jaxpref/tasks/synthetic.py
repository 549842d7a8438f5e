"""A preference task with a known gold reward, small enough to learn from scratch on 2 CPU cores.

**The task.** A prompt is ``K`` random content tokens ``x_1..x_K``. The ideal response is the prompt
*reversed and enciphered*: ``y*_j = f(x_{K+1-j})`` with ``f(t) = c0 + ((t - c0) * mult + shift) mod n``
over the ``n`` content tokens, followed by EOS. So a policy must read the prompt (in reverse) to score
well -- emitting any fixed token is worth nothing.

**The gold reward** of a response ``y`` (EOS stripped, ``|y|`` its length)::

    r*(x, y) = (1/K) * #{j <= min(K, |y|) : y_j = y*_j}  -  length_penalty * | |y| - K | / K

so ``r* = 1`` for the ideal response, ``0`` for a right-length response with no correct token, and
each missing or extra token costs ``length_penalty / K``. Rewards are exact and cheap, so pairs can be
labelled, noise injected, and a policy's samples scored without any judge model.

**Pipeline** (:func:`build_preference_data`): (1) SFT a tiny policy on responses of mixed quality --
each SFT response keeps every ideal token with probability ``q ~ U(0, 0.8)``, else writes the token of
a *distractor* cipher (w.p. 0.7) or a random one, and sometimes drops or adds a token -- so its samples
spread over the reward range and its mode is often the distractor (greedy decoding is not already
optimal; preference learning has to move mass from the distractor to the right cipher); (2) sample
``K`` responses per prompt with the jit KV-cache sampler; (3) build pairs labelled by the gold reward
(``deterministic``: higher reward is chosen; ``bradley_terry``: chosen with probability
``sigma((r_a - r_b) / bt_temperature)``), each carrying both gold scores; (4) inject label flips with
:func:`jaxpref.data.flip_labels` (the mask is recorded); then (5) any algorithm trains on the rows and
(6) :mod:`jaxpref.eval.metrics` evaluates.

Texts use :class:`jaxpref.data.IntTokenizer` (``"int:V"``): space-separated ids, so the whole trainer
(tokenization, buckets, checkpoints) runs unchanged on this task.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpref import data as D
from jaxpref import models as M
from jaxpref.models.generate import generate, left_pad

PAD, BOS, EOS = 0, 1, 2
FIRST_CONTENT = 3


@dataclasses.dataclass(frozen=True)
class GoldTask:
    """The task's constants. ``vocab_size`` includes PAD/BOS/EOS; content ids are ``3 .. vocab_size-1``."""

    vocab_size: int = 32
    prompt_length: int = 6
    mult: int = 5
    shift: int = 7
    length_penalty: float = 0.5
    distractor_shift: int = 11  # SFT errors mostly use this wrong cipher, so the SFT mode is often wrong
    distractor_prob: float = 0.7
    goal_tokens: int = 0  # ids vocab_size .. vocab_size+goal_tokens-1 name goal scores 1..goal_tokens (reward-conditioned)
    # SFT examples' goal tokens: "random" (known but meaningless) | "score" (the response's own rank-scaled gold
    # reward, so a goal means something before preference training, as "Overall score: 10" does to a 7B model)
    sft_goals: str = "random"

    @property
    def num_symbols(self) -> int:
        return self.vocab_size - FIRST_CONTENT

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + self.goal_tokens

    @property
    def tokenizer_path(self) -> str:
        return f"int:{self.model_vocab_size}"

    def goal_token(self, score: float) -> int:
        """The token id that conditions on goal ``score`` (an integer in ``1 .. goal_tokens``)."""
        if not (float(score).is_integer() and 1 <= score <= self.goal_tokens):
            raise ValueError(f"goal {score} is not an integer in [1, {self.goal_tokens}].")
        return self.vocab_size + int(score) - 1

    def cipher(self, token: int) -> int:
        return FIRST_CONTENT + ((token - FIRST_CONTENT) * self.mult + self.shift) % self.num_symbols

    def target(self, prompt: Sequence[int]) -> list[int]:
        """The ideal response (no EOS)."""
        return [self.cipher(int(t)) for t in reversed(list(prompt))]

    def gold_reward(self, prompt: Sequence[int], response: Sequence[int]) -> float:
        """``r*(x, y)`` for content-token lists (no BOS/EOS)."""
        target = self.target(prompt)
        k = len(target)
        response = [int(t) for t in response]
        matches = sum(1 for a, b in zip(response, target) if a == b)
        return matches / k - self.length_penalty * abs(len(response) - k) / k

    def sample_prompts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(FIRST_CONTENT, self.vocab_size, (n, self.prompt_length))

    def distractor(self, token: int) -> int:
        return FIRST_CONTENT + ((token - FIRST_CONTENT) * self.mult + self.distractor_shift) % self.num_symbols

    def noisy_response(self, rng: np.random.Generator, prompt, quality: float, length_noise: float = 0.2) -> list[int]:
        """The ideal response with each token kept w.p. ``quality``, else replaced by the distractor cipher's
        token (w.p. ``distractor_prob``) or a random one; one token dropped or added w.p. ``length_noise`` each."""

        def corrupt(j, t):
            if rng.random() < quality:
                return t
            if rng.random() < self.distractor_prob:
                return self.distractor(int(list(reversed(list(prompt)))[j]))
            return int(rng.integers(FIRST_CONTENT, self.vocab_size))

        out = [corrupt(j, t) for j, t in enumerate(self.target(prompt))]
        u = rng.random()
        if u < length_noise and len(out) > 1:
            del out[int(rng.integers(len(out)))]
        elif u < 2 * length_noise:
            out.insert(int(rng.integers(len(out) + 1)), int(rng.integers(FIRST_CONTENT, self.vocab_size)))
        return out


def to_text(ids: Sequence[int]) -> str:
    return " ".join(str(int(i)) for i in ids)


def from_text(text: str) -> list[int]:
    """The ids of a :func:`to_text` string (a prompt or a response text)."""
    return [int(t) for t in text.split()]


def strip_response(tokens: Sequence[int], mask: Sequence[int], keep_eos: bool = False) -> list[int]:
    """Generated tokens -> content tokens: the masked-in tokens up to the first EOS (included if ``keep_eos``)."""
    out = []
    for t, m in zip(tokens, mask):
        if not m:
            break
        if int(t) == EOS:
            if keep_eos:
                out.append(EOS)
            break
        out.append(int(t))
    return out


def model_config(task: GoldTask, *, hidden: int = 64, layers: int = 2, heads: int = 4) -> M.ModelConfig:
    # BOS + goal + prompt + up to prompt_length + 4 sampled tokens, with room to spare
    positions = max(64, 2 * task.prompt_length + 16)
    return M.ModelConfig(vocab_size=task.model_vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=positions, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


# ---- SFT ---------------------------------------------------------------------------------------------


def sft_goal_of(task: GoldTask, population: np.ndarray):
    """``gold reward -> goal score`` (``1 .. goal_tokens``) by rank within ``population`` (gold rewards of SFT
    responses), the way :func:`jaxpref.tasks.gold.goal_scores` maps training responses; a reward outside the
    population's values takes the score of the nearest one."""
    from jaxpref.data.relabel import rank_to_scale

    values = np.unique(population)
    scores = rank_to_scale(population, (1, task.goal_tokens))
    score_of = np.array([scores[population == v][0] for v in values])

    def goal(reward: float) -> int:
        i = int(np.clip(np.searchsorted(values, reward), 0, len(values) - 1))
        if i > 0 and abs(values[i - 1] - reward) <= abs(values[i] - reward):
            i -= 1
        return int(score_of[i])

    return goal


def sft_batches(task: GoldTask, prompts: np.ndarray, rng: np.random.Generator, q_min: float, q_max: float,
                goal_of=None):
    """One SFT example per prompt: ``(ids [N, T], loss_mask [N, T])`` with BOS + prompt + response + EOS.

    With ``task.goal_tokens``, half the examples carry a goal token after BOS. ``task.sft_goals = "random"``: a
    random one, independent of the response, so the SFT policy knows the tokens and ignores them; what a goal
    means is left for reward-conditioned training to teach. (An untrained goal embedding in front of the prompt
    otherwise derails the tiny policy before any preference training.) ``"score"``: the goal of the response's
    own gold reward (``goal_of``, :func:`sft_goal_of`), so goals carry meaning from the start."""
    seqs, masks = [], []
    for p in prompts:
        resp = task.noisy_response(rng, p, rng.uniform(q_min, q_max))
        goal = []
        if task.goal_tokens and rng.random() < 0.5:
            score = goal_of(task.gold_reward(p, resp)) if task.sft_goals == "score" else 1 + int(rng.integers(task.goal_tokens))
            goal = [task.goal_token(score)]
        resp = resp + [EOS]
        seqs.append([BOS] + goal + list(p) + resp)
        masks.append([0] * (1 + len(goal) + len(p)) + [1] * len(resp))
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, :len(s)], mask[i, :len(m)] = s, m
    return ids, mask


def train_sft(task: GoldTask, config: M.ModelConfig, prompts: np.ndarray, *, seed: int = 0, steps: int = 1500,
              batch_size: int = 64, learning_rate: float = 3e-3, q_min: float = 0.0, q_max: float = 0.8,
              progress: bool = False) -> dict:
    """Train a randomly initialised policy by next-token cross-entropy on mixed-quality responses."""
    from tqdm.auto import tqdm

    from jaxpref.logprobs import token_logprobs

    model = M.LlamaForCausalLM(config)
    params = M.init_params(config, seed)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10), steps)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    goal_of = None
    if task.goal_tokens and task.sft_goals == "score":  # the goal scale over SFT responses, from a draw of its own
        pop_rng = np.random.default_rng([seed, 2])
        pop = prompts[pop_rng.integers(0, len(prompts), 4096)]
        goal_of = sft_goal_of(task, np.array([task.gold_reward(p, task.noisy_response(pop_rng, p, pop_rng.uniform(q_min, q_max)))
                                              for p in pop]))
    elif task.sft_goals not in ("random", "score"):
        raise ValueError(f"sft_goals must be 'random' or 'score', got {task.sft_goals!r}.")

    @jax.jit
    def step(params, opt_state, ids, mask):
        def loss_fn(p):
            logits = model.apply({"params": p}, ids, attention_mask=(ids != PAD).astype(jnp.int32).at[:, 0].set(1))
            lp = token_logprobs(logits[:, :-1], ids[:, 1:])
            m = mask[:, 1:]
            return -(lp * m).sum() / m.sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in tqdm(range(steps), desc="SFT", disable=not progress, leave=False):
        batch = prompts[rng.integers(0, len(prompts), batch_size)]
        ids, mask = sft_batches(task, batch, rng, q_min, q_max, goal_of)
        params, opt_state, _ = step(params, opt_state, jnp.asarray(ids), jnp.asarray(mask))
    return params


# ---- sampling and pairs --------------------------------------------------------------------------------


def sample(task: GoldTask, model: M.LlamaForCausalLM, params: dict, prompts: np.ndarray, *, num_samples: int = 1,
           temperature: float = 1.0, greedy: bool = False, seed: int = 0, max_new_tokens: int | None = None,
           batch_size: int = 256, with_logprobs: bool = False, keep_eos: bool = False, prefix: Sequence[int] = ()):
    """``num_samples`` responses per prompt (content tokens; with ``keep_eos`` the EOS stays when one was
    emitted). Returns a list (per prompt) of lists of responses, and with ``with_logprobs`` also their summed
    log-probs under ``params`` (EOS included). ``prefix`` tokens go between BOS and the prompt (a goal token)."""
    max_new = max_new_tokens or task.prompt_length + 4
    rows = np.repeat(prompts, num_samples, axis=0)
    out, logps = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask = left_pad([[BOS] + list(prefix) + list(p) for p in chunk], pad_token_id=PAD)
        g = generate(model, params, ids, mask, max_new_tokens=max_new, rng=jax.random.PRNGKey(seed * 100003 + start),
                     greedy=greedy, temperature=temperature, eos_token_id=EOS, pad_token_id=PAD)
        toks, gmask, glp = (np.asarray(x) for x in (g.tokens, g.mask, g.logprobs))
        for i in range(len(chunk)):
            out.append(strip_response(toks[i], gmask[i], keep_eos=keep_eos))
            logps.append(float((glp[i] * gmask[i]).sum()))
    grouped = [out[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]
    if with_logprobs:
        return grouped, [logps[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]
    return grouped


def make_pairs(task: GoldTask, prompts: np.ndarray, samples: list[list[list[int]]], *, labeling: str = "deterministic",
               selection: str = "random", bt_temperature: float = 0.1, seed: int = 0, id_prefix: str = "syn"):
    """Preference rows from sampled responses, labelled by the gold reward.

    ``selection``: ``random`` (two distinct samples whose rewards differ) or ``best_worst``. Prompts whose
    samples all have the same reward give no pair. Rows carry ``score_chosen``/``score_rejected`` (gold).
    """
    if labeling not in ("deterministic", "bradley_terry"):
        raise ValueError(f"labeling must be 'deterministic' or 'bradley_terry', got {labeling!r}.")
    rng = np.random.default_rng(seed)
    rows = []
    for n, (p, cands) in enumerate(zip(prompts, samples)):
        cands = [c for c in cands if c]  # an empty response cannot be a pair member
        rewards = [task.gold_reward(p, c) for c in cands]
        distinct = [(i, j) for i in range(len(cands)) for j in range(i + 1, len(cands))
                    if rewards[i] != rewards[j] and cands[i] != cands[j]]
        if not distinct:
            continue
        if selection == "best_worst":
            i, j = int(np.argmax(rewards)), int(np.argmin(rewards))
        else:
            i, j = distinct[int(rng.integers(len(distinct)))]
        a, b = (i, j) if rewards[i] > rewards[j] else (j, i)  # a has the higher gold reward
        if labeling == "bradley_terry":
            p_a = 1.0 / (1.0 + np.exp(-(rewards[a] - rewards[b]) / bt_temperature))
            if rng.random() >= p_a:
                a, b = b, a
        rows.append({"id": f"{id_prefix}:{n}", "prompt": to_text(p), "chosen": " " + to_text(cands[a]),
                     "rejected": " " + to_text(cands[b]), "score_chosen": rewards[a], "score_rejected": rewards[b]})
    return D.PreferenceDataset(rows)


def clean_pairs(task: GoldTask, prompts: np.ndarray, rng: np.random.Generator, id_prefix: str = "clean"):
    """Held-out pairs with certain labels: two noisy responses of different quality, higher gold reward chosen."""
    rows = []
    for n, p in enumerate(prompts):
        a, b = task.noisy_response(rng, p, rng.uniform(0.5, 1.0)), task.noisy_response(rng, p, rng.uniform(0.0, 0.5))
        ra, rb = task.gold_reward(p, a), task.gold_reward(p, b)
        if ra == rb or a == b or not a or not b:
            continue
        if ra < rb:
            a, b, ra, rb = b, a, rb, ra
        rows.append({"id": f"{id_prefix}:{n}", "prompt": to_text(p), "chosen": " " + to_text(a),
                     "rejected": " " + to_text(b), "score_chosen": ra, "score_rejected": rb})
    return D.PreferenceDataset(rows)


@dataclasses.dataclass
class TaskData:
    """Everything an experiment needs on the gold-reward task, for one seed."""

    task: GoldTask
    model: M.LlamaForCausalLM
    sft_params: dict
    train_rows: D.PreferenceDataset  # clean-labelled pairs from SFT samples (flip them per experiment)
    eval_rows: D.PreferenceDataset  # held-out clean pairs (test split)
    eval_prompts: np.ndarray  # held-out prompts for sampling-based metrics (test split)
    sft_eval: dict  # metrics of the SFT policy itself on the test prompts
    # the validation split (tuning): its own prompts and clean pairs, disjoint draws from the test split's
    val_rows: D.PreferenceDataset | None = None
    val_prompts: np.ndarray | None = None
    sft_val_eval: dict | None = None

    def split(self, name: str) -> "TaskData":
        """This task data with ``eval_*``/``sft_eval`` taken from split ``name`` (``test`` or ``validation``)."""
        if name == "test":
            return self
        if name != "validation":
            raise ValueError(f"unknown split {name!r}; expected 'test' or 'validation'.")
        if self.val_prompts is None:
            raise ValueError("this task data has no validation split (task.num_val_prompts = 0).")
        return dataclasses.replace(self, eval_rows=self.val_rows, eval_prompts=self.val_prompts,
                                   sft_eval=self.sft_val_eval)


def build_preference_data(task: GoldTask, *, seed: int = 0, num_pair_prompts: int = 512, num_eval_prompts: int = 256,
                          num_sft_prompts: int = 4096, samples_per_prompt: int = 4, sft_steps: int = 1500,
                          labeling: str = "deterministic", selection: str = "random", hidden: int = 64,
                          layers: int = 2, num_val_prompts: int = 0, progress: bool = False) -> TaskData:
    """Steps (1)-(3) of the pipeline for one seed (flips are applied by the caller).

    ``num_val_prompts > 0`` adds a validation split (prompts and clean pairs for tuning), drawn from a generator
    of its own so that the other draws -- and so every result without a validation split -- are unchanged."""
    rng = np.random.default_rng(seed)
    sft_prompts = task.sample_prompts(rng, num_sft_prompts)
    pair_prompts = task.sample_prompts(rng, num_pair_prompts)
    eval_prompts = task.sample_prompts(rng, num_eval_prompts)
    config = model_config(task, hidden=hidden, layers=layers)
    params = train_sft(task, config, sft_prompts, seed=seed, steps=sft_steps, progress=progress)
    model = M.LlamaForCausalLM(config)
    samples = sample(task, model, params, pair_prompts, num_samples=samples_per_prompt, seed=seed + 1)
    train_rows = make_pairs(task, pair_prompts, samples, labeling=labeling, selection=selection, seed=seed)
    eval_rows = clean_pairs(task, eval_prompts, np.random.default_rng(seed + 7))
    sft_eval = sampled_gold_reward(task, model, params, eval_prompts, seed=seed + 2)
    val = {}
    if num_val_prompts:
        val_rng = np.random.default_rng([seed, 1])
        val_prompts = task.sample_prompts(val_rng, num_val_prompts)
        val = dict(val_prompts=val_prompts, val_rows=clean_pairs(task, val_prompts, val_rng, id_prefix="val"),
                   sft_val_eval=sampled_gold_reward(task, model, params, val_prompts, seed=seed + 2))
    return TaskData(task, model, params, train_rows, eval_rows, eval_prompts, sft_eval, **val)


# ---- sampling-based metrics of a policy on the task -----------------------------------------------------


def sampled_gold_reward(task: GoldTask, model, params, prompts: np.ndarray, *, seed: int = 0, temperature: float = 1.0,
                        prefix=()) -> dict:
    """``{"gold_reward_greedy", "gold_reward_sampled", "rewards_sampled", "rewards_greedy"}`` on ``prompts``
    (each preceded by ``prefix`` tokens, e.g. a goal token, which the gold reward does not see)."""
    greedy = sample(task, model, params, prompts, greedy=True, seed=seed, prefix=prefix)
    sampled = sample(task, model, params, prompts, temperature=temperature, seed=seed, prefix=prefix)
    r_greedy = [task.gold_reward(p, s[0]) for p, s in zip(prompts, greedy)]
    r_sampled = [task.gold_reward(p, s[0]) for p, s in zip(prompts, sampled)]
    return {"gold_reward_greedy": float(np.mean(r_greedy)), "gold_reward_sampled": float(np.mean(r_sampled)),
            "rewards_sampled": r_sampled, "rewards_greedy": r_greedy}


def sampled_kl(task: GoldTask, model, params, ref_params, prompts: np.ndarray, *, seed: int = 0,
               num_samples: int = 1, prefix=()) -> float:
    """Monte-Carlo ``KL(pi || pi_ref)``: mean of ``log pi(y|x) - log pi_ref(y|x)`` over ``y ~ pi`` (temperature 1),
    an unbiased estimate, so reward gains bought with collapse show up. ``prefix`` (a goal token) conditions the
    policy only: the divergence of what is deployed from ``pi_ref``."""
    from jaxpref.eval.metrics import response_logprobs

    # Score exactly what was sampled (EOS included when emitted; a response cut at max_new_tokens has none).
    samples = sample(task, model, params, prompts, num_samples=num_samples, seed=seed, keep_eos=True, prefix=prefix)
    flat_prompts = [list(p) for p, ss in zip(prompts, samples) for _ in ss]
    flat = [s for ss in samples for s in ss]
    pol = response_logprobs(model, params, [[BOS] + list(prefix) + p for p in flat_prompts], flat)
    ref = response_logprobs(model, ref_params, [[BOS] + p for p in flat_prompts], flat)
    return float(np.mean(pol - ref))
