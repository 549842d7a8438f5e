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
* A pair whose two responses are the same tokens after truncation (long responses that differ only after the
  cut) carries no preference: a :class:`DataError` naming the row and the fix (raise ``max_length``), or a
  counted skip with ``skip_invalid``.

Conversational rows are rendered with the tokenizer's chat template (``load_tokenizer(..., chat_template=)``
overrides it). A conversation the template rejects (e.g. roles that do not alternate) is a
:class:`ChatTemplateError` naming the row and the template's message, or a counted skip with ``skip_invalid``.

:func:`tokenize_dataset` returns a list (:class:`TokenizedPairs`) whose ``.report`` (:class:`TokenizeReport`)
counts the rows kept, the rows skipped by reason and the truncations; ``report.to_dict()`` is JSON-ready.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Protocol, Sequence

import numpy as np

from jaxpref.data.formats import SKIP_HINT, DataError, PreferenceDataset
from jaxpref.errors import ConfigError

log = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_end", "keep_start")


class RowTokenizeError(DataError):
    """One row cannot be tokenized under the options (no room for a response, identical after truncation, ...).

    ``reason`` names the problem without the row (``str(e)``), ``key`` the same without per-row numbers (for
    counting), ``fix`` what would make the row usable. :func:`tokenize_dataset` adds the row id, or skips the row
    with ``skip_invalid``.
    """

    def __init__(self, reason: str, *, key: str | None = None, fix: str = ""):
        super().__init__(reason)
        self.key, self.fix = key or reason, fix


class ChatTemplateError(RowTokenizeError):
    """The tokenizer's chat template rejected a conversation (the template's own message is kept)."""


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


def read_chat_template(template: str) -> str:
    """A chat template given as a path to a ``.jinja`` (any text) file, or as the Jinja text itself."""
    if os.path.isfile(template):
        with open(template, encoding="utf-8") as f:
            return f.read()
    if "{%" in template or "{{" in template:
        return template
    raise ConfigError(f"chat_template {template!r} is neither an existing file nor a Jinja template "
                      "(a template contains '{%' or '{{').")


class HFTokenizer:
    """A tokenizer from a local Hugging Face directory (``AutoTokenizer.from_pretrained``).

    ``chat_template`` (Jinja text or a path to a ``.jinja`` file) replaces the directory's chat template; a
    template that does not compile is a :class:`ConfigError`.
    """

    def __init__(self, directory: str, chat_template: str | None = None):
        import transformers

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"Tokenizer directory {directory!r} does not exist.")
        self.path = directory
        self.tok = transformers.AutoTokenizer.from_pretrained(directory)
        if chat_template is not None:
            self._set_chat_template(chat_template)
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def _set_chat_template(self, chat_template: str) -> None:
        import jinja2

        self.tok.chat_template = read_chat_template(chat_template)
        try:  # compile it now (transformers compiles on first use); a probe conversation's own errors are fine
            self.tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"chat_template {chat_template[:80]!r}: not a valid Jinja template (line {e.lineno}: "
                              f"{e.message}).") from None
        except Exception:  # noqa: BLE001 -- the template may legitimately reject a bare user turn
            pass

    def render_chat(self, messages, add_generation_prompt: bool) -> str:
        """The conversation as text through the chat template.

        Raises:
          DataError: the tokenizer has no chat template (every conversational row needs one).
          ChatTemplateError: the template rejected this conversation (any exception it raised, e.g. jinja2's
            ``TemplateError`` from ``raise_exception``), with the template's message.
        """
        if not getattr(self.tok, "chat_template", None):
            raise DataError(f"{self.path}: tokenizer has no chat template; conversational data needs one (pass "
                            "chat_template= to load_tokenizer).")
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # noqa: BLE001 -- templates raise whatever their authors chose
            msg = (str(e).splitlines() or [""])[0]
            raise ChatTemplateError(f"the chat template rejects the conversation ({type(e).__name__}: {msg})",
                                    fix="fix the row's roles/messages or use another chat_template") from None


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


def load_tokenizer(path: str, chat_template: str | None = None) -> Tokenizer:
    """A tokenizer from a name or path.

    ``chat_template``: Jinja text, or a path to a ``.jinja`` file, replacing the chat template of a HF tokenizer
    (directory or ``"mistral"``); the other kinds have no chat template (:class:`ConfigError`).

    * ``"mistral"`` / ``"mistral:v3"``: the real Mistral SentencePiece model shipped by ``mistral-common``,
      wrapped as a HF ``LlamaTokenizer`` (so ids equal what transformers/TRL produce; see below);
    * a HF tokenizer directory;
    * ``"int:V"``: :class:`IntTokenizer` over ``V`` ids (synthetic tasks);
    * a ``.model`` file: raw SentencePiece. Note: SentencePiece and the HF tokenizer built from the same
      model split runs of spaces differently (``"!  All"`` -> ``['!', '▁', '▁All']`` vs ``['!', '▁▁', 'All']``);
      60% of the HH sequences contain such runs. Use the HF form to match HF-trained checkpoints.
    """
    if path.startswith("mistral") and not os.path.exists(path):
        return HFTokenizer(sentencepiece_hf_dir(mistral_tokenizer_path(path.partition(":")[2] or "v1")), chat_template)
    if path.startswith("int:") or path.endswith(".model") or os.path.isfile(path):
        if chat_template is not None:
            raise ConfigError(f"chat_template applies to Hugging Face tokenizers; {path!r} is not one (use a HF "
                              "tokenizer directory for conversational data).")
        return IntTokenizer(int(path[4:])) if path.startswith("int:") else SentencePieceTokenizer(path)
    return HFTokenizer(path, chat_template)


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


@dataclasses.dataclass
class TokenizeReport:
    """What :func:`tokenize_dataset` did.

    ``rows_in`` rows went in, ``rows_kept`` pairs came out; ``skipped`` rows were dropped (``skip_invalid``),
    counted by reason (without per-row numbers) in ``reasons``, the first few as ``(row id, reason)`` in
    ``first_skipped``. ``prompts_truncated`` / ``responses_truncated`` count kept pairs whose prompt / at least
    one response was cut by ``max_prompt_length`` / ``max_length``.
    """

    rows_in: int = 0
    rows_kept: int = 0
    skipped: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    first_skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    prompts_truncated: int = 0
    responses_truncated: int = 0

    def summary(self) -> str:
        s = (f"tokenized {self.rows_kept} of {self.rows_in} rows ({self.prompts_truncated} prompts and "
             f"{self.responses_truncated} responses truncated)")
        if self.skipped:
            first = ", ".join(f"{rid} ({reason})" for rid, reason in self.first_skipped)
            s += f"; skipped {self.skipped} ({dict(sorted(self.reasons.items()))}); first: {first}"
        return s

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["first_skipped"] = [list(x) for x in self.first_skipped]
        return d


class TokenizedPairs(list):
    """The list of :class:`TokenizedPair` from :func:`tokenize_dataset`, with its :class:`TokenizeReport` as
    ``.report`` (a plain list in every other respect)."""

    def __init__(self, pairs=(), report: TokenizeReport | None = None):
        super().__init__(pairs)
        self.report = report or TokenizeReport(rows_in=len(self), rows_kept=len(self))


def _tokenize(row: dict, tokenizer: Tokenizer, options: TokenizeOptions):
    """``(prompt_ids, chosen_ids, rejected_ids, prompt_truncated, response_truncated)``; see :func:`tokenize_pair`."""
    if isinstance(row["prompt"], list):  # conversational: render with the chat template
        prompt_text = tokenizer.render_chat(row["prompt"], add_generation_prompt=True)
        full = [tokenizer.render_chat(row["prompt"] + row[k], add_generation_prompt=False)
                for k in ("chosen", "rejected")]
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
    prompt_truncated = limit is not None and len(bos) + len(prompt) > limit
    if prompt_truncated:
        keep = limit - len(bos)
        prompt = prompt[-keep:] if options.prompt_truncation == "keep_end" and keep > 0 else prompt[:max(keep, 0)]
    prompt = bos + prompt
    response_truncated = False
    if options.max_length is not None:
        room = options.max_length - len(prompt)
        if room < 1:
            raise RowTokenizeError(
                f"prompt of {len(prompt)} tokens leaves no room for a response within max_length {options.max_length}",
                key=f"prompt leaves no room for a response within max_length {options.max_length}",
                fix="raise max_length or lower max_prompt_length")
        response_truncated = any(len(r) > room for r in responses)
        responses = [r[:room] for r in responses]
    if not responses[0] or not responses[1]:
        raise RowTokenizeError("a response has no tokens after tokenization", fix="check the row's responses")
    if responses[0] == responses[1]:
        if response_truncated:
            raise RowTokenizeError(f"chosen and rejected are identical after truncation to {options.max_length} tokens",
                                   fix="raise max_length so that their difference fits")
        raise RowTokenizeError("chosen and rejected tokenize to the same ids", fix="check the row's responses")
    return prompt, responses[0], responses[1], prompt_truncated, response_truncated


def tokenize_pair(row: dict, tokenizer: Tokenizer, options: TokenizeOptions) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` for one row, BOS/EOS and truncation applied.

    Raises:
      RowTokenizeError: the row cannot be used under ``options`` (no room for a response, the responses identical
        after truncation, no response tokens) or its conversation is rejected by the chat template
        (:class:`ChatTemplateError`).
      DataError: the tokenizer cannot render conversations at all (no chat template).
    """
    return _tokenize(row, tokenizer, options)[:3]


def tokenize_dataset(
    dataset: PreferenceDataset,
    tokenizer: Tokenizer,
    options: TokenizeOptions = TokenizeOptions(),
    *,
    skip_invalid: bool = False,
    progress: bool = True,
) -> TokenizedPairs:
    """Tokenize every row (see :func:`tokenize_pair`).

    A row that cannot be used raises :class:`DataError` naming the row id, the reason and the fix, or with
    ``skip_invalid`` is skipped and counted. The result is a list of :class:`TokenizedPair` whose ``.report``
    (:class:`TokenizeReport`) has the counts, for logs and ``results.json``.
    """
    from tqdm.auto import tqdm

    out = TokenizedPairs(report=TokenizeReport())
    report = out.report
    for i, row in enumerate(tqdm(dataset, desc="tokenizing", disable=not progress, leave=False)):
        report.rows_in += 1
        try:
            p, c, r, p_cut, r_cut = _tokenize(row, tokenizer, options)
        except RowTokenizeError as e:
            if not skip_invalid:
                raise DataError(f"row {row['id']}: {e}. To fix: {e.fix}, or skip such rows with {SKIP_HINT}.") from None
            report.skipped += 1
            report.reasons[e.key] = report.reasons.get(e.key, 0) + 1
            if len(report.first_skipped) < 5:
                report.first_skipped.append((row["id"], str(e)))
            continue
        report.prompts_truncated += int(p_cut)
        report.responses_truncated += int(r_cut)
        out.append(TokenizedPair(i, row["id"], np.asarray(p, np.int32), np.asarray(c, np.int32),
                                 np.asarray(r, np.int32), float(row.get("weight", 1.0)), int(row.get("group", 0))))
    report.rows_kept = len(out)
    if report.skipped:
        log.warning(report.summary())
    if not out:
        raise DataError(f"no row survived tokenization ({report.summary()}).")
    return out
