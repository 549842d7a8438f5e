"""Sampling K responses per prompt from a policy and scoring candidate responses: shared by ROPO's
rejection sampling (scores = implicit reward) and APO (scores = the reward model).

Everything takes a *runtime* -- anything with ``model``, ``tokenizer`` and ``tok_options`` (a
:class:`jaxpref.train.runtime.Runtime` or a :class:`jaxpref.train.trainer.Trainer`). Conversational prompts
(message lists) are rendered with the tokenizer's chat template; a response stops at EOS and at the start
of the next user turn (Anthropic HH's ``"\\n\\nHuman:"`` for text prompts, the chat template's user-turn
prefix for conversations), so a policy that keeps talking does not write the user's next message.
"""

from __future__ import annotations

import logging
from typing import Callable

import jax
import numpy as np

from jaxpref import data as D
from jaxpref.models.generate import generate, left_pad
from jaxpref.train.runtime import host_tree

log = logging.getLogger(__name__)

HH_USER_TURN = "\n\nHuman:"


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt (chat-rendered if conversational), starting with BOS when the tokenizer has one."""
    text = tokenizer.render_chat(prompt, add_generation_prompt=True) if isinstance(prompt, list) else prompt
    ids = tokenizer.encode(text)
    return ids if (ids and ids[0] == tokenizer.bos_id) or tokenizer.bos_id is None else [tokenizer.bos_id] + ids


def response_text(tokenizer, ids: list[int]) -> str:
    """Generated ids -> the response string as rows store it (IntTokenizer rows keep a leading space)."""
    text = tokenizer.decode(ids)
    return " " + text if isinstance(tokenizer, D.IntTokenizer) else text


def user_turn_marker(tokenizer, prompt) -> str | None:
    """The text that starts the next user turn after a response to ``prompt``: ``"\\n\\nHuman:"`` for HH-style
    text prompts, the chat template's user-turn prefix for conversations, else None."""
    if isinstance(prompt, str):
        return HH_USER_TURN if HH_USER_TURN.strip() in prompt else None
    probe = "\x00USER-TURN-PROBE\x00"
    try:
        rendered = tokenizer.render_chat([{"role": "user", "content": probe}], add_generation_prompt=False)
    except Exception:  # noqa: BLE001 -- templates raise what their authors chose
        return None
    marker = rendered.split(probe)[0]
    bos = getattr(getattr(tokenizer, "tok", None), "bos_token", None)
    if bos and marker.startswith(bos):
        marker = marker[len(bos):]
    return marker.strip() or None


def cut_at(text: str, marker: str | None) -> str:
    """``text`` up to the first ``marker`` (whitespace before it dropped); unchanged without one."""
    if marker and marker in text:
        return text[: text.index(marker)].rstrip()
    return text


def sample_responses(runtime, params, prompts: list, k: int, *, max_new_tokens: int, seed: int,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int | None = None,
                     label: str = "sampling") -> list[list[str]]:
    """``k`` sampled responses per prompt from ``params`` (the runtime's full model params, host or device), cut
    at EOS and at the next user turn; prompts longer than ``max_prompt_length`` keep their end. Empty responses
    come back as ``""``.

    The sampler runs on the runtime's mesh: params sharded like the model's (FSDP/tensor), each call's prompt
    batch of ``batch_size`` sequences (default ``config.train.sample_batch_size``) split over ``data`` x
    ``fsdp`` -- so a 7B policy samples on the slice it trains on (its memory is what ``python -m jaxpref.aot``
    reports as ``sampler``)."""
    from tqdm.auto import tqdm

    from jaxpref import sharding as S

    tok = runtime.tokenizer
    ids_list = [prompt_ids(tok, p) for p in prompts]
    limit = runtime.tok_options.max_prompt_length
    if limit:
        ids_list = [p[-limit:] if len(p) > limit else p for p in ids_list]
    markers = [user_turn_marker(tok, p) for p in prompts]
    flat = [p for p in ids_list for _ in range(k)]
    mesh = runtime.mesh
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = batch_size or runtime.cfg.train.sample_batch_size
    batch_size = max(shards, batch_size - batch_size % shards)
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, runtime.abstract_model_params())
    placed = jax.device_put(params, shardings)
    texts: list[str] = []
    starts = range(0, len(flat), batch_size)
    for start in tqdm(starts, desc=label, disable=len(starts) < 2, leave=False):
        chunk = flat[start:start + batch_size]
        chunk = chunk + [chunk[-1]] * (-len(chunk) % shards)  # whole rows per batch shard; extras dropped below
        ids, mask = left_pad(chunk, pad_token_id=tok.pad_id)
        ids = jax.device_put(np.asarray(ids), S.batch_sharding(mesh, 2))
        mask = jax.device_put(np.asarray(mask), S.batch_sharding(mesh, 2))
        with S.activation_rules(mesh):
            out = generate(runtime.model, placed, ids, mask, max_new_tokens=max_new_tokens, rng=seed * 7919 + start,
                           temperature=temperature, top_p=top_p, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        tokens, gmask = host_tree(out.tokens), host_tree(out.mask)
        for row_tokens, row_mask in list(zip(tokens, gmask))[: len(flat[start:start + batch_size])]:
            resp = []
            for t, m in zip(row_tokens, row_mask):
                if not m or int(t) == tok.eos_id:
                    break
                resp.append(int(t))
            texts.append(response_text(tok, resp) if resp else "")
    texts = [cut_at(t, markers[i // k]) for i, t in enumerate(texts)]
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def as_response(prompt, text: str):
    """A response in the row's shape: plain text for text prompts, one assistant message for conversations."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def response_as_text(response) -> str:
    """A row's response as text (a conversation's last message content)."""
    return response[-1]["content"] if isinstance(response, list) else response


def distinct_candidates(candidates: list[str]) -> list[str]:
    """Non-empty candidates, duplicates removed, first occurrence kept (order preserved)."""
    return list(dict.fromkeys(c for c in candidates if c.strip()))


def score_candidates(runtime, prompts: list, candidates: list[list[str]],
                     score_fn: Callable[[list[D.TokenizedPair]], tuple[np.ndarray, np.ndarray]]) -> list[dict[int, float]]:
    """Score every candidate response of every prompt: ``[{candidate index: score}]`` per prompt.

    Candidates are tokenized two per pseudo-pair with the runtime's tokenizer and options (one that cannot fit
    ``max_length`` is left out) and scored by ``score_fn(pairs) -> (first [N], second [N])`` -- e.g. a reward
    model's :meth:`Trainer.pair_logps`, or an implicit reward ``beta * (log pi - log pi_ref)``."""
    tok = runtime.tokenizer
    pairs, owners = [], []
    for n, (prompt, cands) in enumerate(zip(prompts, candidates)):
        for a in range(0, len(cands), 2):
            b = a + 1 if a + 1 < len(cands) else a
            try:
                row = {"prompt": prompt, "chosen": as_response(prompt, cands[a]),
                       "rejected": as_response(prompt, cands[b])}
                p, c, r = D.tokenize_pair(row, tok, runtime.tok_options)
            except Exception:  # noqa: BLE001 -- a candidate that cannot fit max_length is dropped
                continue
            pairs.append(D.TokenizedPair(len(pairs), f"{n}#{a}", np.asarray(p, np.int32), np.asarray(c, np.int32),
                                         np.asarray(r, np.int32)))
            owners.append((n, a, b))
    scores: list[dict[int, float]] = [{} for _ in prompts]
    if not pairs:
        return scores
    first, second = score_fn(pairs)
    for q, (n, a, b) in enumerate(owners):
        scores[n][a] = float(first[q])
        scores[n][b] = float(second[q])
    return scores


def best_and_worst(scores: dict[int, float]) -> tuple[int, int] | None:
    """Indices of the highest and lowest score (first on ties): ``(k, k)`` for a single candidate, None for none."""
    if not scores:
        return None
    return max(scores, key=scores.get), min(scores, key=scores.get)
