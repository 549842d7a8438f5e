"""Loading preference data from files or the Hub into validated rows.

Row formats (``format=`` argument, or ``"auto"`` to detect per file from the first row):

* ``explicit``: ``prompt``, ``chosen``, ``rejected`` strings.
* ``implicit`` (Anthropic HH): ``chosen`` and ``rejected`` are whole dialogues; the prompt is the text up
  to and including the last ``"\\n\\nAssistant:"`` (the original DPO code's convention) and must be the
  same in both, the responses are what follows. (TRL's character-wise longest common prefix is not
  used: it cuts into the responses whenever both begin with the same words.)
* ``conversational``: ``chosen``/``rejected`` (and optionally ``prompt``) are lists of
  ``{"role", "content"}`` messages. Without ``prompt``, the prompt is the messages before the last one,
  which must be identical in both and the last message must be the assistant's. Rendered later with the
  tokenizer's chat template.
* Any of the above may carry ``score_chosen``/``score_rejected`` (UltraFeedback style); they are kept
  (as floats) for reward-conditioned training.

Every row gets a stable ``id``: its own ``id`` field when present, else ``"<file stem>:<line>"``.
Invalid rows raise :class:`DataError` naming the file and 1-based line, or with ``skip_invalid=True``
are skipped, counted, and reported in :attr:`PreferenceDataset.report` and the log.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
from typing import Any, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"
FORMATS = ("auto", "explicit", "implicit", "conversational")
SHIPPED_HH = os.path.join(os.path.dirname(__file__), "assets", "hh_rlhf_harmless_base_test.jsonl.gz")


class DataError(ValueError):
    """A preference file or row is unusable; the message names the file, the 1-based row and the problem."""


@dataclasses.dataclass
class LoadReport:
    """What loading did: rows read, kept, skipped (with the first few locations and reasons)."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: int = 0
    first_skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (line, reason)
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        s = f"{self.source}: kept {self.rows_kept} of {self.rows_read} rows"
        if self.skipped:
            where = ", ".join(f"line {n} ({r})" for n, r in self.first_skipped)
            s += f"; skipped {self.skipped} invalid ({dict(sorted(self.reasons.items()))}); first: {where}"
        return s


class PreferenceDataset(Sequence[dict]):
    """A list of validated rows (dicts with ``id``, ``prompt``, ``chosen``, ``rejected`` and optional scores and
    ``flipped``), plus the :class:`LoadReport` of how they were loaded."""

    def __init__(self, rows: list[dict], report: LoadReport | None = None):
        self.rows = rows
        self.report = report or LoadReport(source="<memory>", rows_read=len(rows), rows_kept=len(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PreferenceDataset(self.rows[i], self.report)
        return self.rows[i]

    def __repr__(self) -> str:
        return f"PreferenceDataset({len(self.rows)} rows from {self.report.source})"


# ---- reading raw records ---------------------------------------------------------------------------


def _iter_records(path: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(1-based line/row number, record)`` from a local file/directory or a Hub dataset name."""
    if os.path.isdir(path):
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except FileNotFoundError as e:
            raise DataError(f"{path}: not a datasets.save_to_disk directory ({e}).") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: a DatasetDict without a 'train' split; splits are {list(ds)}.")
            ds = ds["train"]
        yield from enumerate(ds, start=1)
    elif os.path.exists(path):
        lower = path.lower()
        if lower.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.gzip")):
            opener = gzip.open if lower.endswith((".gz", ".gzip")) else open
            with opener(path, "rt", encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, DataError(f"{path}, line {n}: not valid JSON ({e.msg}).")
        elif lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        elif lower.endswith(".arrow"):
            import datasets

            yield from enumerate(datasets.Dataset.from_file(path), start=1)
        else:
            raise DataError(f"{path}: unknown file type; use .jsonl, .jsonl.gz, .parquet, .arrow or a save_to_disk dir.")
    else:
        known_suffix = path.lower().endswith((".jsonl", ".gz", ".json", ".parquet", ".arrow"))
        if known_suffix or path.startswith(("/", ".", "~")):
            raise DataError(f"{path}: no such file or directory.")
        import datasets

        name, _, split = path.partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # offline, unknown name, ...
            raise DataError(
                f"{path!r} is neither a local file nor a loadable Hub dataset ({type(e).__name__}: {e}). "
                "Offline, pass a local .jsonl/.parquet/.arrow file or a save_to_disk directory."
            ) from None
        yield from enumerate(ds, start=1)


# ---- validating rows -------------------------------------------------------------------------------


class _Invalid(Exception):
    pass


def detect_format(record: dict) -> str:
    """``explicit``, ``implicit`` or ``conversational`` from a row's fields."""
    if not isinstance(record, dict):
        raise _Invalid("row is not a JSON object")
    chosen = record.get("chosen")
    if isinstance(chosen, list):
        return "conversational"
    if "prompt" in record:
        return "explicit"
    return "implicit"


def split_hh_dialogue(text: str) -> tuple[str, str]:
    """``(prompt, response)``: the prompt ends with the last ``"\\n\\nAssistant:"``, the response follows."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise _Invalid(f"no {HH_ASSISTANT!r} turn in the dialogue")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def _require_str(record: dict, key: str) -> str:
    if key not in record or record[key] is None:
        raise _Invalid(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise _Invalid(f"field {key!r} is {type(value).__name__}, expected a string")
    return value


def _require_messages(record: dict, key: str) -> list[dict]:
    if key not in record or record[key] is None:
        raise _Invalid(f"missing field {key!r}")
    messages = record[key]
    if not isinstance(messages, list) or not messages:
        raise _Invalid(f"field {key!r} must be a non-empty list of messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _Invalid(f"field {key!r} has a message that is not {{'role': str, 'content': str}}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _parse_row(record: Any, fmt: str) -> dict:
    if not isinstance(record, dict):
        raise _Invalid("row is not a JSON object")
    if fmt == "explicit":
        prompt, chosen, rejected = (_require_str(record, k) for k in ("prompt", "chosen", "rejected"))
    elif fmt == "implicit":
        chosen_full, rejected_full = _require_str(record, "chosen"), _require_str(record, "rejected")
        prompt, chosen = split_hh_dialogue(chosen_full)
        prompt_r, rejected = split_hh_dialogue(rejected_full)
        if prompt != prompt_r:
            raise _Invalid("chosen and rejected dialogues have different prompts")
    elif fmt == "conversational":
        chosen, rejected = _require_messages(record, "chosen"), _require_messages(record, "rejected")
        if record.get("prompt") is not None:
            prompt = _require_messages(record, "prompt")
        else:
            if chosen[:-1] != rejected[:-1]:
                raise _Invalid("chosen and rejected conversations differ before their last message")
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
            if not prompt:
                raise _Invalid("conversation has no prompt messages before the response")
        for name, msgs in (("chosen", chosen), ("rejected", rejected)):
            if msgs[-1]["role"] != "assistant":
                raise _Invalid(f"{name} response's last message is from {msgs[-1]['role']!r}, not 'assistant'")
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")

    def empty(r):
        return (not r.strip()) if isinstance(r, str) else all(not m["content"].strip() for m in r)

    if empty(chosen):
        raise _Invalid("empty chosen response")
    if empty(rejected):
        raise _Invalid("empty rejected response")
    if chosen == rejected:
        raise _Invalid("chosen and rejected responses are identical")
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key in ("score_chosen", "score_rejected"):
        if record.get(key) is not None:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Invalid(f"field {key!r} is {value!r}, expected a number")
            row[key] = float(value)
    for key in ("golden",):  # optional extra fields later stages use
        if record.get(key) is not None:
            row[key] = record[key]
    return row


def load_preferences(
    path: str | Sequence[str],
    format: str = "auto",
    skip_invalid: bool = False,
    *,
    max_rows: int | None = None,
) -> PreferenceDataset:
    """Load and validate preference rows.

    Args:
      path: a local ``.jsonl``, ``.jsonl.gz``, ``.parquet``, ``.arrow`` file, a ``datasets.save_to_disk``
        directory, a Hub dataset name (``"name"`` or ``"name:split"``, needs network), or a list of these.
      format: ``"auto"`` (detect per file from its first row) or one of ``explicit``, ``implicit``,
        ``conversational`` (see the module docstring).
      skip_invalid: skip bad rows (counted, logged, in ``.report``) instead of raising.
      max_rows: stop after this many valid rows.

    Returns:
      A :class:`PreferenceDataset` of dicts ``{id, prompt, chosen, rejected[, score_chosen, score_rejected]}``.

    Raises:
      DataError: the first bad row (file, 1-based line, what is wrong), or an unreadable source.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
    paths = [path] if isinstance(path, str) else list(path)
    rows: list[dict] = []
    report = LoadReport(source=", ".join(paths))
    seen_ids: set[str] = set()
    for p in paths:
        stem = os.path.basename(p.rstrip("/")).split(".")[0]
        fmt = None if format == "auto" else format
        for n, record in _iter_records(p):
            if max_rows is not None and len(rows) >= max_rows:
                break
            report.rows_read += 1
            try:
                if isinstance(record, DataError):
                    raise _Invalid(str(record).split(": ", 1)[-1])
                if fmt is None:
                    fmt = detect_format(record)
                row = _parse_row(record, fmt)
                rid = str(record["id"]) if record.get("id") is not None else f"{stem}:{n}"
                if rid in seen_ids:
                    raise _Invalid(f"duplicate id {rid!r}")
            except _Invalid as e:
                if not skip_invalid:
                    raise DataError(f"{p}, line {n}: {e}. Fix the row or pass skip_invalid=True to skip such rows.") from None
                reason = str(e)
                report.skipped += 1
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
                if len(report.first_skipped) < 5:
                    report.first_skipped.append((n, reason))
                continue
            seen_ids.add(rid)
            rows.append({"id": rid, **row})
    report.rows_kept = len(rows)
    if report.skipped:
        log.warning(report.summary())
    if not rows:
        raise DataError(f"{report.source}: no valid rows ({report.summary()}).")
    return PreferenceDataset(rows, report)


def save_jsonl(rows: Iterable[dict], path: str) -> None:
    """Write rows as JSON lines (``.gz`` compresses)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
