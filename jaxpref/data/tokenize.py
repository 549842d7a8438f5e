"""Tokenizers (local HF directory or SentencePiece ``.model``) and tokenization of preference pairs.

A tokenized pair is ``prompt_ids`` (starting with exactly one BOS), ``chosen_ids`` and
``rejected_ids`` (each ending with EOS, unless truncated). As in TRL, the prompt and each
prompt+response are tokenized whole and the response is what follows their common prefix, so token
merges across the boundary come out the way the model will see them.

Truncation:

* ``max_prompt_length``: a longer prompt is cut to that many tokens, keeping its end
  (``prompt_truncation="keep_end"``, the default, as TRL 0.x; the part next to the response matters
  most) or its start (``"keep_start"``). With ``keep_end`` the BOS is kept as the first token.
* ``max_length``: prompt + response longer than this keeps its start (TRL 1.16's ``keep_start``), i.e.
  the response's end (and its EOS) is cut. A pair whose prompt leaves no room for a response token is
  invalid (TRL drops such rows): a :class:`DataError`, or a counted skip with ``skip_invalid``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Protocol, Sequence

import numpy as np

from jaxpref.data.formats import DataError, PreferenceDataset

log = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_end", "keep_start")


class Tokenizer(Protocol):
    """What jaxpref needs from a tokenizer."""

    bos_id: int | None
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:  # no special tokens
        ...

    def decode(self, ids: Sequence[int]) -> str:
        ...


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` (Llama/Mistral style: BOS/EOS from the model, pad = EOS if none)."""

    def __init__(self, model_path: str):
        import sentencepiece as spm

        if not os.path.exists(model_path):
            raise FileNotFoundError(f"SentencePiece model {model_path!r} does not exist.")
        self.path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def render_chat(self, messages, add_generation_prompt: bool) -> str:
        raise DataError(f"{self.path}: a bare SentencePiece model has no chat template; use a HF tokenizer directory "
                        "for conversational data.")


class HFTokenizer:
    """A tokenizer from a local Hugging Face directory (``AutoTokenizer.from_pretrained``)."""

    def __init__(self, directory: str):
        import transformers

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"Tokenizer directory {directory!r} does not exist.")
        self.path = directory
        self.tok = transformers.AutoTokenizer.from_pretrained(directory)
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def render_chat(self, messages, add_generation_prompt: bool) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise DataError(f"{self.path}: tokenizer has no chat template; conversational data needs one.")
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


class IntTokenizer:
    """Texts of space-separated integers <-> token ids, for synthetic tasks (``"int:64"`` in configs).

    Ids 0, 1, 2 are PAD, BOS and EOS; ``"5 17 33"`` encodes to ``[5, 17, 33]``. Chat templates do not apply.
    """

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, vocab_size: int):
        if vocab_size < 4:
            raise ValueError(f"IntTokenizer needs vocab_size >= 4, got {vocab_size}.")
        self.vocab_size = vocab_size
        self.path = f"int:{vocab_size}"

    def encode(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token {bad[0]} is outside the IntTokenizer vocabulary [0, {self.vocab_size}).")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def render_chat(self, messages, add_generation_prompt: bool) -> str:
        raise DataError("IntTokenizer has no chat template.")


def mistral_tokenizer_path(version: str = "v1") -> str:
    """The real Mistral SentencePiece model shipped by the ``mistral-common`` package (v1: 32000 tokens,
    the Mistral-7B-v0.1 vocabulary; v3: 32768, Mistral-7B-Instruct-v0.3)."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")
    if spec is None:
        raise FileNotFoundError("pip install mistral-common to get the offline Mistral tokenizer.")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    names = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}
    return os.path.join(data, names[version])


def sentencepiece_hf_dir(model_path: str, cache_dir: str | None = None) -> str:
    """A HF tokenizer directory (``LlamaTokenizer``, BOS added, legacy spacing) around a SentencePiece model,
    created once in ``cache_dir`` (default ``$JAXPREF_CACHE`` or ``~/.cache/jaxpref``)."""
    import hashlib
    import json
    import shutil

    cache_dir = cache_dir or os.environ.get("JAXPREF_CACHE", os.path.expanduser("~/.cache/jaxpref"))
    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out = os.path.join(cache_dir, f"spm-tokenizer-{digest}")
    if not os.path.exists(os.path.join(out, "tokenizer_config.json")):
        tmp = out + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        shutil.copy(model_path, os.path.join(tmp, "tokenizer.model"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                       "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": True}, f)
        os.replace(tmp, out) if not os.path.exists(out) else shutil.rmtree(tmp)
    return out


def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer from a name or path.

    * ``"mistral"`` / ``"mistral:v3"``: the real Mistral SentencePiece model shipped by ``mistral-common``,
      wrapped as a HF ``LlamaTokenizer`` (so ids equal what transformers/TRL produce; see below);
    * a HF tokenizer directory;
    * ``"int:V"``: :class:`IntTokenizer` over ``V`` ids (synthetic tasks);
    * a ``.model`` file: raw SentencePiece. Note: SentencePiece and the HF tokenizer built from the same
      model split runs of spaces differently (``"!  All"`` -> ``['!', '▁', '▁All']`` vs ``['!', '▁▁', 'All']``);
      60% of the HH sequences contain such runs. Use the HF form to match HF-trained checkpoints.
    """
    if path.startswith("int:"):
        return IntTokenizer(int(path[4:]))
    if path.startswith("mistral") and not os.path.exists(path):
        return HFTokenizer(sentencepiece_hf_dir(mistral_tokenizer_path(path.partition(":")[2] or "v1")))
    if path.endswith(".model") or os.path.isfile(path):
        return SentencePieceTokenizer(path)
    return HFTokenizer(path)


@dataclasses.dataclass(frozen=True)
class TokenizeOptions:
    """Lengths and truncation (see the module docstring). ``max_length``/``max_prompt_length`` ``None`` = no limit."""

    max_length: int | None = 512
    max_prompt_length: int | None = 256
    prompt_truncation: str = "keep_end"
    add_bos: bool = True
    add_eos: bool = True

    def __post_init__(self):
        if self.prompt_truncation not in TRUNCATION_MODES:
            raise ValueError(f"prompt_truncation must be one of {TRUNCATION_MODES}, got {self.prompt_truncation!r}.")


@dataclasses.dataclass
class TokenizedPair:
    index: int  # position in the source dataset
    id: str
    prompt_ids: np.ndarray
    chosen_ids: np.ndarray
    rejected_ids: np.ndarray
    weight: float = 1.0  # the row's "weight" (default 1): the pair's weight in the step's weighted reduction
    group: int = 0  # the row's "group" (default 0): e.g. 1 = APO adversarial (golden, sample) pair

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences (prompt + response)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _Skip(Exception):
    pass


def tokenize_pair(row: dict, tokenizer: Tokenizer, options: TokenizeOptions) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` for one row, BOS/EOS and truncation applied."""
    if isinstance(row["prompt"], list):  # conversational: render with the chat template
        prompt_text = tokenizer.render_chat(row["prompt"], add_generation_prompt=True)
        full = [tokenizer.render_chat(row["prompt"] + row[k], add_generation_prompt=False) for k in ("chosen", "rejected")]
    else:
        prompt_text = row["prompt"]
        full = [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    prompt = tokenizer.encode(prompt_text)
    full_ids = [tokenizer.encode(t) for t in full]
    cut = min(_common_prefix(prompt, f) for f in full_ids)
    prompt = prompt[:cut]
    responses = [f[cut:] for f in full_ids]
    # Chat templates may write BOS / end-of-turn tokens themselves; never add a second one.
    add_bos = options.add_bos and not (prompt and prompt[0] == tokenizer.bos_id)
    if options.add_eos:
        responses = [r if tokenizer.eos_id in r else r + [tokenizer.eos_id] for r in responses]
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []

    limit = options.max_prompt_length
    if limit is not None and len(bos) + len(prompt) > limit:
        keep = limit - len(bos)
        prompt = prompt[-keep:] if options.prompt_truncation == "keep_end" and keep > 0 else prompt[:max(keep, 0)]
    prompt = bos + prompt
    if options.max_length is not None:
        room = options.max_length - len(prompt)
        if room < 1:
            raise _Skip(f"prompt of {len(prompt)} tokens leaves no room for a response within max_length "
                        f"{options.max_length}")
        responses = [r[:room] for r in responses]
    if not responses[0] or not responses[1]:
        raise _Skip("a response has no tokens after tokenization")
    return prompt, responses[0], responses[1]


def tokenize_dataset(
    dataset: PreferenceDataset,
    tokenizer: Tokenizer,
    options: TokenizeOptions = TokenizeOptions(),
    *,
    skip_invalid: bool = False,
    progress: bool = True,
) -> list[TokenizedPair]:
    """Tokenize every row; rows that cannot fit raise :class:`DataError` (or are counted and skipped)."""
    from tqdm.auto import tqdm

    out: list[TokenizedPair] = []
    skipped: list[tuple[str, str]] = []
    for i, row in enumerate(tqdm(dataset, desc="tokenizing", disable=not progress, leave=False)):
        try:
            p, c, r = tokenize_pair(row, tokenizer, options)
        except _Skip as e:
            if not skip_invalid:
                raise DataError(f"row {row['id']}: {e}. Raise max_length/lower max_prompt_length, or pass "
                                "skip_invalid=True.") from None
            skipped.append((row["id"], str(e)))
            continue
        out.append(TokenizedPair(i, row["id"], np.asarray(p, np.int32), np.asarray(c, np.int32),
                                 np.asarray(r, np.int32), float(row.get("weight", 1.0)), int(row.get("group", 0))))
    if skipped:
        log.warning("tokenization skipped %d rows (first: %s)", len(skipped), skipped[:3])
    if not out:
        raise DataError("no row survived tokenization.")
    return out
