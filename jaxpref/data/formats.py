"""Loading preference data from files, ``datasets`` directories or the Hugging Face cache into validated rows.

**Sources** (:func:`load_preferences`):

* ``.jsonl`` / ``.jsonl.gz`` (and ``.json`` / ``.json.gz`` holding one object per line): read line by line by
  jaxpref's own reader, so that every error names the file and the 1-based line. Each line is decoded on its
  own, so one line of bad bytes costs one row, not the file.
* ``.json`` / ``.json.gz`` holding a JSON array of row objects: parsed element by element; errors name the
  line where the element starts.
* ``.csv`` (a header row, every cell read as text; empty score cells are missing scores), ``.parquet``:
  streamed through ``datasets`` (no cache written); ``.arrow``: memory-mapped by ``datasets``;
  ``datasets.save_to_disk`` directories (a ``Dataset`` or a ``DatasetDict``). Errors name the 1-based row.
* A Hub name, ``"org/name"`` or ``"org/name:split"``: taken from the local Hugging Face cache (a dataset
  ``datasets.load_dataset`` prepared before, or a ``huggingface_hub`` snapshot) without touching the network;
  if it is not cached and ``HF_HUB_OFFLINE`` is not set, ``datasets.load_dataset`` downloads it.

JSON files are not read through ``datasets``: one malformed line or undecodable byte makes it reject the whole
file without saying where (which defeats ``skip_invalid``), and it cannot say on which line a row was.

``split=`` (or a ``":split"`` suffix on a directory or Hub name) picks a split of a ``DatasetDict`` or a Hub
dataset; a single file has only ``"train"``. :func:`available_splits` / :func:`has_test_split` tell which exist.

**Row shapes**, detected per row (``format="auto"``) -- these are TRL's preference shapes:

* ``explicit``: ``prompt``, ``chosen``, ``rejected`` strings.
* ``hh`` (implicit, Anthropic HH): ``chosen``/``rejected`` are whole dialogues containing
  ``"\\n\\nAssistant:"``; the prompt is the text up to and including the last ``"\\n\\nAssistant:"`` (the
  original DPO code's convention) and must be the same in both; the responses are what follows.
* ``implicit``: ``chosen``/``rejected`` are other full texts; the prompt is their shared prefix cut back to a
  turn or word boundary (:func:`split_shared_prefix`). TRL's character-wise split instead cuts wherever the
  texts first differ, i.e. into words and into responses that begin alike.
* ``conversational``: ``prompt``, ``chosen``, ``rejected`` are lists of ``{"role", "content"}`` messages. If
  ``chosen`` and ``rejected`` repeat the prompt messages first (full conversations), those are removed.
* ``implicit conversational``: message lists in ``chosen``/``rejected``, no ``prompt``: the prompt is the
  messages before the last one, which must be identical in both; the last message must be the assistant's.
* ``string-prompt conversational`` (e.g. ``ultrafeedback_binarized``): a string ``prompt`` and message-list
  ``chosen``/``rejected``. The prompt becomes ``[{"role": "user", "content": prompt}]``; when ``chosen`` and
  ``rejected`` are full conversations that start with this user turn (after any shared system turn), the
  shared messages up to it are the prompt and are removed from the responses.

Conversational rows are rendered later with the tokenizer's chat template. ``format=`` may force a family:
``"explicit"``, ``"implicit"`` (``hh`` or ``implicit``) or ``"conversational"`` (the three list shapes). Any
shape may carry ``score_chosen``/``score_rejected`` (kept as floats, for reward-conditioned training).

Every row gets a stable ``id``: its own ``id`` field when present, else ``"<file stem>:<line or row>"``
(``"<stem>[<split>]:<row>"`` for a split other than ``train``).

**Bad input.** An invalid row (missing field, empty or identical responses, non-string text, non-numeric
score, differing HH prompts, invalid JSON, bytes that are not UTF-8, a duplicate id) raises
:class:`DataError` naming the file, the line or row and the reason. With ``skip_invalid=True`` it is
skipped, counted by reason and listed in :attr:`PreferenceDataset.report`. A file that breaks off (a
truncated or corrupt ``.gz``, a JSON array cut short, a parquet file that fails mid-way) raises
:class:`DataError` naming the file and the last line/row read in full; with ``skip_invalid=True`` the rows read
before the damage are kept, the damage is recorded in ``report.damaged`` and logged as a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import os
import re
import zlib
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from jaxpref.errors import UserError

log = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"
FORMATS = ("auto", "explicit", "implicit", "conversational")
SHAPES = ("explicit", "hh", "implicit", "conversational", "implicit conversational", "string-prompt conversational")
FORMAT_SHAPES = {
    "explicit": ("explicit",),
    "implicit": ("hh", "implicit"),
    "conversational": ("conversational", "implicit conversational", "string-prompt conversational"),
}
SCORE_KEYS = ("score_chosen", "score_rejected")
SKIP_HINT = "--config.data.skip_invalid=True"
SHIPPED_HH = os.path.join(os.path.dirname(__file__), "assets", "hh_rlhf_harmless_base_test.jsonl.gz")

_LINE_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.gzip", ".json", ".json.gz", ".json.gzip")
_KNOWN_SUFFIXES = _LINE_SUFFIXES + (".csv", ".parquet", ".arrow", ".gz")


class DataError(UserError, ValueError):
    """A preference file or row is unusable; the message names the file, the 1-based line/row and the problem."""


class Skipped(NamedTuple):
    """One skipped row: ``source`` file, ``unit`` (``"line"`` or ``"row"``), 1-based ``number``, ``reason``."""

    source: str
    unit: str
    number: int
    reason: str


@dataclasses.dataclass
class LoadReport:
    """What loading did.

    ``rows_read`` counts every record met (blank lines excluded), ``rows_kept`` the valid ones returned;
    ``skipped`` = invalid rows dropped, counted by reason in ``reasons`` (reasons without per-row details) with
    the first few in ``first_skipped``; ``shapes`` counts the row shapes seen (see the module docstring);
    ``damaged`` has one message per file whose reading stopped early (``skip_invalid`` only; otherwise that
    raises). :meth:`to_dict` is JSON-serializable (for ``results.json``).
    """

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: int = 0
    first_skipped: list[Skipped] = dataclasses.field(default_factory=list)
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    shapes: dict[str, int] = dataclasses.field(default_factory=dict)
    damaged: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line: kept/read, shapes, skip reasons with the first locations, damage."""
        s = f"{self.source}: kept {self.rows_kept} of {self.rows_read} rows"
        if self.shapes:
            s += "; shapes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.shapes.items(), key=lambda kv: -kv[1]))
        if self.skipped:
            several = len({sk.source for sk in self.first_skipped}) > 1
            where = ", ".join(f"{os.path.basename(sk.source) + ' ' if several else ''}{sk.unit} {sk.number} "
                              f"({sk.reason})" for sk in self.first_skipped)
            s += f"; skipped {self.skipped} invalid ({dict(sorted(self.reasons.items()))}); first: {where}"
        if self.damaged:
            s += "; damaged: " + " | ".join(self.damaged)
        return s

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["first_skipped"] = [sk._asdict() for sk in self.first_skipped]
        return d

    def _skip(self, where: Skipped, key: str) -> None:
        self.skipped += 1
        self.reasons[key] = self.reasons.get(key, 0) + 1
        if len(self.first_skipped) < 5:
            self.first_skipped.append(where)


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
#
# A reader yields ``(number, record)`` pairs (``(number, record, where)`` when the location says more than
# "<unit> <number>"), where ``record`` is the parsed row or an ``_Invalid`` to report for that row, and at most
# one final ``_Damage`` when the source breaks off. Only the underlying read is inside the readers' ``try``
# blocks, so a bug in the caller is never mistaken for a damaged file.


class _Invalid(Exception):
    """A row-level problem; ``key`` is the reason without per-row details (for counting)."""

    def __init__(self, reason: str, key: str | None = None):
        super().__init__(reason)
        self.key = key or reason


@dataclasses.dataclass(frozen=True)
class _Damage:
    message: str


@dataclasses.dataclass(frozen=True)
class _Source:
    records: Iterator  # of (number, record[, where]) and at most one final _Damage
    unit: str  # "line", "element" (of a JSON array) or "row"
    stem: str  # id prefix


def _is_gzip(path: str) -> bool:
    return path.lower().endswith((".gz", ".gzip"))


def _damage_text(path: str, unit: str, last: int, e: BaseException, what: str = "could not be read") -> str:
    done = f"after {unit} {last} (everything through {unit} {last} was read)" if last else f"before its first {unit}"
    detail = (str(e).strip().splitlines() or [""])[0]
    return f"{path}: {what} {done}: {type(e).__name__}: {detail}"


def _decode_json_line(raw: bytes, n: int) -> Any:
    """One line's bytes -> the parsed record, ``None`` for a blank line, or an ``_Invalid``."""
    try:
        text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
    except UnicodeDecodeError as e:
        return _Invalid(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)",
                        key="not valid UTF-8")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _Invalid(f"not valid JSON ({e.msg} at column {e.colno})", key="not valid JSON")


def _read_json_lines(path: str) -> Iterator:
    opener = gzip.open if _is_gzip(path) else open
    last_good = 0
    held = None  # a last line without "\n": only trusted once the stream has ended cleanly
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    held = (n, raw)
                    continue
                last_good = n
                record = _decode_json_line(raw, n)
                if record is not None:
                    yield n, record
    except (EOFError, OSError, zlib.error) as e:  # truncated/corrupt gzip (EOFError, BadGzipFile), I/O errors
        what = "the gzip stream ends early or is corrupt" if _is_gzip(path) else "could not be read"
        yield _Damage(_damage_text(path, "line", last_good, e, what))
        return
    if held is not None:
        record = _decode_json_line(held[1], held[0])
        if record is not None:
            yield held[0], record


_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"
_WS = re.compile(r"[ \t\n\r]*")


def _read_json_array(path: str, data: bytes) -> Iterator:
    """Elements of a JSON array, numbered 1, 2, ... and located by the line they start on; bad bytes invalidate
    only their element."""
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end() + 1  # past "["
    line, counted_to, index = 1, 0, 0
    last = ""
    pos = _WS.match(text, pos).end()
    if text[pos:pos + 1] == "]":
        return  # an empty array
    while True:
        pos = _WS.match(text, pos).end()
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            done = f"after {last}" if last else "before its first element"
            yield _Damage(f"{path}: is not a valid JSON array {done}: {type(e).__name__}: {e}")
            return
        index += 1
        last = f"element {index} (line {line})"
        if _SURROGATE.search(text, pos, end):
            yield index, _Invalid("not valid UTF-8", key="not valid UTF-8"), last
        else:
            yield index, record, last
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            problem = "expected ',' or ']' after it" if pos < len(text) else "the array is not closed"
            yield _Damage(f"{path}: is not a valid JSON array after {last}: {problem}")
            return


def _read_json(path: str) -> tuple[Iterator, str]:
    """A ``.json`` file, a JSON array of rows or JSON lines: ``(records, unit)``."""
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4096)
            if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"[":
                return _read_json_lines(path), "line"
            data = head + f.read()
    except (EOFError, OSError, zlib.error) as e:
        what = "the gzip stream ends early or is corrupt" if _is_gzip(path) else "could not be read"
        return iter([_Damage(_damage_text(path, "line", 0, e, what))]), "line"
    return _read_json_array(path, data), "element"


class _Unopenable:
    """Stands in for a dataset that could not be opened: iterating it raises the opening error."""

    def __init__(self, error: Exception):
        self.error = error

    def __iter__(self):
        raise self.error


def _open_streaming(path: str, builder: str, **kwargs):
    """``datasets``' streaming reader of a local file (no cache written), or an :class:`_Unopenable`."""
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=path, split="train", streaming=True, **kwargs)
    except Exception as e:  # noqa: BLE001 -- pyarrow/pandas raise many types for a file that is not what it says
        return _Unopenable(e)


def _read_dataset(path: str, dataset) -> Iterator:
    """Rows of a ``datasets`` ``Dataset``/``IterableDataset`` numbered from 1; a failing read is damage."""
    n = 0
    try:
        it = iter(dataset)
    except Exception as e:  # noqa: BLE001 -- as below
        yield _Damage(_damage_text(path, "row", n, e))
        return
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 -- pyarrow/pandas/datasets raise many types for a bad file
            yield _Damage(_damage_text(path, "row", n, e))
            return
        n += 1
        yield n, record


def _csv_record(record: dict) -> dict:
    """CSV cells are all text: an empty score cell is a missing score, a numeric one a number."""
    record = dict(record)
    for key in SCORE_KEYS + ("id",):
        if record.get(key) == "":
            record[key] = None
    for key in SCORE_KEYS:
        if isinstance(record.get(key), str):
            try:
                record[key] = float(record[key])
            except ValueError:
                pass  # validation names the bad value
    return record


def _read_csv(path: str) -> Iterator:
    import datasets

    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(_damage_text(path, "row", 0, e)) from None
    if not header:
        raise DataError(f"{path}: an empty CSV file; the first line must name the columns (prompt, chosen, rejected).")
    # Every cell as text (so a response "42" stays a string), empty cells as "" rather than NaN.
    features = datasets.Features({name: datasets.Value("string") for name in header})
    ds = _open_streaming(path, "csv", features=features, keep_default_na=False)
    for item in _read_dataset(path, ds):
        yield item if isinstance(item, _Damage) else (item[0], _csv_record(item[1]))


def _select_split(path: str, dd, split: str | None):
    """``dd[split]`` of a ``DatasetDict`` (default ``train``), or a one-line error listing the splits."""
    split = split or "train"
    if split not in dd:
        raise DataError(f"{path}: no split {split!r}; its splits are {sorted(dd)}. Pick one with split=... "
                        f"or a ':{sorted(dd)[0]}' suffix.")
    return dd[split]


def _split_suffix(path: str) -> tuple[str, str | None]:
    """``"dir:test"`` -> ``("dir", "test")`` when ``dir`` exists or looks like a Hub name; else ``(path, None)``."""
    base, sep, split = path.rpartition(":")
    if sep and split and "/" not in split and (os.path.exists(base) or not os.path.exists(path)):
        return base, split
    return path, None


def _looks_local(path: str) -> bool:
    return path.lower().endswith(_KNOWN_SUFFIXES) or path.startswith(("/", ".", "~")) or path.count("/") > 1


def _hub_dataset(name: str, split: str | None):
    """A Hub dataset from the local cache (prepared by ``datasets`` or a ``huggingface_hub`` snapshot), else a
    download when ``HF_HUB_OFFLINE`` is not set; a :class:`DataError` when neither works."""
    import datasets

    split = split or "train"
    cache = _hub_cache_builder(name)
    if cache is not None:
        if split not in (cache.info.splits or {}):
            raise DataError(f"{name!r} (Hugging Face cache): no split {split!r}; its splits are "
                            f"{sorted(cache.info.splits or {})}.")
        return _cached(name, lambda: cache.as_dataset(split=split))
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        return _select_split(f"{name} ({snapshot})", _cached(name, lambda: datasets.load_dataset(snapshot)), split)
    where = f"the datasets cache {datasets.config.HF_DATASETS_CACHE} or the hub cache"
    if datasets.config.HF_HUB_OFFLINE:
        raise DataError(f"{name!r} is neither a local file nor in {where} (offline mode); pass a local "
                        ".jsonl/.json/.csv/.parquet/.arrow file or a save_to_disk directory.")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 -- offline, unknown name, gated, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{name!r} is neither a local file nor a loadable Hub dataset ({type(e).__name__}: {msg}); "
                        f"it is not in {where} either. Offline, pass a local .jsonl/.json/.csv/.parquet/.arrow file "
                        "or a save_to_disk directory (set HF_HUB_OFFLINE=1 to skip the download attempt).") from None


def _cached(name: str, load):
    """``load()``, with a failure (a corrupt or partial cache) as a one-line :class:`DataError`."""
    try:
        return load()
    except Exception as e:  # noqa: BLE001 -- datasets/pyarrow raise many types for a damaged cache
        raise DataError(f"{name!r}: its Hugging Face cache could not be read ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}); delete it and download again.") from None


def _hub_cache_builder(name: str):
    """The ``datasets`` builder over ``name``'s prepared Arrow cache (what ``load_dataset`` uses offline), or None."""
    import datasets
    from datasets.packaged_modules.cache.cache import Cache

    try:
        return Cache(dataset_name=name.split("/")[-1], repo_id=name, version="auto", hash="auto",
                     cache_dir=datasets.config.HF_DATASETS_CACHE)
    except Exception as e:  # noqa: BLE001 -- ValueError "Couldn't find cache for ..." / several configs; odd names
        if "multiple" in str(e):
            raise DataError(f"{name!r}: several configurations are cached ({str(e).splitlines()[0]}); "
                            "save the one you want with save_to_disk and pass that directory.") from None
        return None


def _hub_snapshot(name: str) -> str | None:
    """The local directory of a ``huggingface_hub`` snapshot of dataset ``name``, or None."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=name, repo_type="dataset", local_files_only=True)
    except Exception:  # noqa: BLE001 -- not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def _open_source(path: str, split: str | None) -> _Source:
    """The records of one source (see the module docstring)."""
    import_split, given = split, path
    if not os.path.exists(path):
        path, suffix_split = _split_suffix(path)
        if suffix_split is not None:
            if split is not None and split != suffix_split:
                raise DataError(f"{path}: split {suffix_split!r} in the name but split={split!r} passed.")
            import_split = suffix_split
    stem = os.path.basename(path.rstrip("/")).split(".")[0]
    if import_split not in (None, "train"):
        stem = f"{stem}[{import_split}]"
    lower = path.lower()
    if os.path.isdir(path):
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:  # noqa: BLE001 -- missing metadata (FileNotFoundError), corrupt Arrow files, ...
            raise DataError(f"{path}: not a readable datasets.save_to_disk directory ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0]}).") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = _select_split(path, ds, import_split)
        elif import_split not in (None, "train"):
            raise DataError(f"{path}: a single Dataset (no splits), so there is no split {import_split!r}.")
        return _Source(_read_dataset(path, ds), "row", stem)
    if os.path.exists(path):
        if import_split not in (None, "train"):
            raise DataError(f"{path}: a single file has no split {import_split!r} (only 'train').")
        if lower.endswith((".jsonl", ".jsonl.gz", ".jsonl.gzip")):
            return _Source(_read_json_lines(path), "line", stem)
        if lower.endswith((".json", ".json.gz", ".json.gzip")):
            return _Source(*_read_json(path), stem)
        if lower.endswith(".csv"):
            return _Source(_read_csv(path), "row", stem)
        if lower.endswith(".parquet"):
            return _Source(_read_dataset(path, _open_streaming(path, "parquet")), "row", stem)
        if lower.endswith(".arrow"):
            import datasets

            try:
                ds = datasets.Dataset.from_file(path)
            except Exception as e:  # noqa: BLE001 -- pyarrow's errors for a file that is not Arrow
                raise DataError(_damage_text(path, "row", 0, e)) from None
            return _Source(_read_dataset(path, ds), "row", stem)
        raise DataError(f"{path}: unknown file type; use .jsonl, .jsonl.gz, .json, .csv, .parquet, .arrow or a "
                        "save_to_disk directory.")
    if _looks_local(path):
        raise DataError(f"{given}: no such file or directory.")
    return _Source(_read_dataset(path, _hub_dataset(path, import_split)), "row", stem)


def available_splits(path: str) -> list[str]:
    """The splits ``path`` offers: a ``DatasetDict`` directory's or a cached Hub dataset's split names; a single
    file or ``Dataset`` directory has ``["train"]``. Reads only metadata, except for a ``huggingface_hub``
    snapshot, which ``datasets`` prepares (once) to find its splits."""
    if os.path.isdir(path):
        dict_json = os.path.join(path, "dataset_dict.json")
        if os.path.exists(dict_json):
            with open(dict_json, encoding="utf-8") as f:
                return list(json.load(f)["splits"])
        return ["train"]
    if os.path.exists(path) or _looks_local(path):
        return ["train"]
    name = _split_suffix(path)[0]
    cache = _hub_cache_builder(name)
    if cache is not None:
        return list(cache.info.splits or {})
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        import datasets

        return list(_cached(name, lambda: datasets.load_dataset(snapshot)))
    raise DataError(f"{name!r} is neither a local file nor a cached Hub dataset; cannot list its splits.")


def has_test_split(path: str) -> bool:
    """Whether ``path`` (a ``DatasetDict`` directory or cached Hub dataset) has a ``test`` split, which a trainer
    can use as its evaluation split."""
    return "test" in available_splits(path)


# ---- validating rows -------------------------------------------------------------------------------


def detect_shape(record: Any) -> str:
    """The row's shape (one of :data:`SHAPES`) from its fields' types; see the module docstring."""
    if not isinstance(record, dict):
        raise _Invalid("row is not a JSON object")
    prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if any(isinstance(v, list) for v in (prompt, chosen, rejected)):
        if prompt is None:
            return "implicit conversational"
        return "string-prompt conversational" if isinstance(prompt, str) else "conversational"
    if prompt is not None:
        return "explicit"
    if any(isinstance(t, str) and HH_ASSISTANT in t for t in (chosen, rejected)):
        return "hh"
    return "implicit"


def detect_format(record: Any) -> str:
    """The format family (``explicit``, ``implicit`` or ``conversational``) of one row."""
    shape = detect_shape(record)
    return next(fmt for fmt, shapes in FORMAT_SHAPES.items() if shape in shapes)


def split_hh_dialogue(text: str) -> tuple[str, str]:
    """``(prompt, response)``: the prompt ends with the last ``"\\n\\nAssistant:"``, the response follows."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise _Invalid(f"no {HH_ASSISTANT!r} turn in the dialogue")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


# A role label opening a line after the first one ("\nAssistant:", "\nA:", "\n### Response:"): one to three
# words and a colon, then a space, a line break or the end. A label at the very start of the text names the
# first speaker, not the respondent, so it does not count.
_ROLE_LABEL = re.compile(r"\n[ \t]*(?:#{1,6}[ \t]*)?[A-Za-z][\w-]*(?: [\w-]+){0,2}:(?=[ \t\n]|$)")
# Assistant headers of common chat templates, as they appear in rendered text.
_CHAT_MARKERS = ("<|im_start|>assistant\n", "<|start_header_id|>assistant<|end_header_id|>\n\n", "[/INST]",
                 "<|assistant|>\n", "<|assistant|>", "<start_of_turn>model\n", "<｜Assistant｜>")


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _word_boundary(text: str, i: int) -> bool:
    """Whether cutting ``text`` before index ``i`` splits no word (letters, digits, ``_``)."""
    return i == 0 or i >= len(text) or not (_word_char(text[i - 1]) and _word_char(text[i]))


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(prompt, chosen_response, rejected_response)`` of two full texts with an implicit prompt.

    Let ``L`` be the length of the texts' common character prefix. The prompt ends at

    1. the end of the last turn marker inside that prefix: a role label opening a later line (``"\\nA:"``,
       ``"\\nAssistant:"``, ``"\\n### Response:"``; one to three words and a colon) or a chat template's
       assistant header (``"<|im_start|>assistant\\n"``, ``"[/INST]"``, ...); else
    2. the last position ``<= L`` that splits no word in either text, moved back before any whitespace there,
       so the responses start with it (as in HH: ``"...Assistant:"`` + ``" I think so."``).

    TRL's ``extract_prompt`` cuts at ``L`` itself (less one space), i.e. into a word when the texts first differ
    inside one (``"The cat s" + "at"``) and into the responses when they begin alike (``"...A: I" + " think"``).

    Raises ``_Invalid`` when no such prompt exists (the texts differ from their first word).
    """
    limit = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        limit += 1
    shared = chosen[:limit]
    cut = 0
    for m in _ROLE_LABEL.finditer(shared):
        cut = m.end()
    for marker in _CHAT_MARKERS:
        i = shared.rfind(marker)
        if i >= 0:
            cut = max(cut, i + len(marker))
    if cut == 0:
        cut = limit
        while cut > 0 and not (_word_boundary(chosen, cut) and _word_boundary(rejected, cut)):
            cut -= 1
        while cut > 0 and shared[cut - 1].isspace():
            cut -= 1
    if cut == 0:
        raise _Invalid("chosen and rejected share no prompt (they differ within their first word); add a "
                       "'prompt' field")
    return chosen[:cut], chosen[cut:], rejected[cut:]


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


def _strip_shared_prompt(prompt: list[dict], chosen: list[dict], rejected: list[dict]):
    """Full conversations that repeat ``prompt`` first -> just the responses."""
    n = len(prompt)
    if len(chosen) > n and len(rejected) > n and chosen[:n] == prompt and rejected[:n] == prompt:
        return chosen[n:], rejected[n:]
    return chosen, rejected


def _string_prompt_conversation(prompt: str, chosen: list[dict], rejected: list[dict]):
    """``(prompt messages, chosen, rejected)`` for a string prompt with message-list responses."""
    user = {"role": "user", "content": prompt}
    for i in range(min(len(chosen), len(rejected)) - 2, -1, -1):  # the last shared user turn with this text
        if chosen[i] == user and chosen[: i + 1] == rejected[: i + 1]:
            return chosen[: i + 1], chosen[i + 1:], rejected[i + 1:]
    return [user], chosen, rejected


def _parse_row(record: Any, shape: str) -> dict:
    """A validated row ``{prompt, chosen, rejected[, scores, golden]}`` from a record of ``shape``."""
    if not isinstance(record, dict):
        raise _Invalid("row is not a JSON object")
    if shape == "explicit":
        prompt, chosen, rejected = (_require_str(record, k) for k in ("prompt", "chosen", "rejected"))
    elif shape == "hh":
        chosen_full, rejected_full = _require_str(record, "chosen"), _require_str(record, "rejected")
        prompt, chosen = split_hh_dialogue(chosen_full)
        prompt_r, rejected = split_hh_dialogue(rejected_full)
        if prompt != prompt_r:
            raise _Invalid("chosen and rejected dialogues have different prompts")
    elif shape == "implicit":
        prompt, chosen, rejected = split_shared_prefix(_require_str(record, "chosen"), _require_str(record, "rejected"))
    elif shape in FORMAT_SHAPES["conversational"]:
        chosen, rejected = _require_messages(record, "chosen"), _require_messages(record, "rejected")
        if shape == "conversational":
            prompt = _require_messages(record, "prompt")
            chosen, rejected = _strip_shared_prompt(prompt, chosen, rejected)
        elif shape == "string-prompt conversational":
            prompt, chosen, rejected = _string_prompt_conversation(_require_str(record, "prompt"), chosen, rejected)
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
        raise ValueError(f"unknown row shape {shape!r}; one of {SHAPES}")

    def empty(r):
        return (not r.strip()) if isinstance(r, str) else all(not m["content"].strip() for m in r)

    if empty(chosen):
        raise _Invalid("empty chosen response")
    if empty(rejected):
        raise _Invalid("empty rejected response")
    if chosen == rejected:
        raise _Invalid("chosen and rejected responses are identical")
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key in SCORE_KEYS:
        if record.get(key) is not None:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Invalid(f"field {key!r} is {value!r}, expected a number", key=f"field {key!r} is not a number")
            row[key] = float(value)
    for key in ("golden",):  # optional extra fields later stages use
        if record.get(key) is not None:
            row[key] = record[key]
    return row


def _shape_for(record: Any, format: str) -> str:
    """The shape to parse ``record`` as: its own, or under a forced ``format`` that family's default."""
    shape = detect_shape(record)
    if format == "auto" or shape in FORMAT_SHAPES[format]:
        return shape
    if format == "implicit":
        return "hh" if any(isinstance(record.get(k), str) and HH_ASSISTANT in record[k]
                           for k in ("chosen", "rejected")) else "implicit"
    return format  # "explicit" or "conversational": parsed as such, so the error names the wrong field


def load_preferences(
    path: str | Sequence[str],
    format: str = "auto",
    skip_invalid: bool = False,
    *,
    max_rows: int | None = None,
    split: str | None = None,
) -> PreferenceDataset:
    """Load and validate preference rows.

    Args:
      path: a local ``.jsonl``, ``.jsonl.gz``, ``.json`` (array or lines), ``.csv``, ``.parquet``, ``.arrow``
        file, a ``datasets.save_to_disk`` directory (``"dir:test"`` picks a split), a Hub dataset name
        (``"org/name"`` or ``"org/name:split"``; from the local cache), or a list of these.
      format: ``"auto"`` (detect each row's shape) or a family: ``explicit``, ``implicit``, ``conversational``
        (see the module docstring).
      skip_invalid: skip bad rows (counted by reason, logged, in ``.report``) instead of raising; keep the rows
        read before a file breaks off (recorded in ``.report.damaged``) instead of raising.
      max_rows: stop after this many valid rows.
      split: the split of a ``DatasetDict`` directory or Hub dataset (default ``"train"``).

    Returns:
      A :class:`PreferenceDataset` of dicts ``{id, prompt, chosen, rejected[, score_chosen, score_rejected]}``.

    Raises:
      DataError: the first bad row (file, 1-based line/row, what is wrong), a damaged file, an unreadable source.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
    paths = [path] if isinstance(path, str) else list(path)
    rows: list[dict] = []
    report = LoadReport(source=", ".join(paths))
    seen_ids: set[str] = set()
    for p in paths:
        source = _open_source(p, split)
        for item in source.records:
            if max_rows is not None and len(rows) >= max_rows:
                break
            if isinstance(item, _Damage):
                if not skip_invalid:
                    raise DataError(f"{item.message}. Repair or re-create the file, or keep the rows read before "
                                    f"the damage with {SKIP_HINT}.")
                report.damaged.append(item.message)
                break
            n, record, *located = item
            where = located[0] if located else f"{source.unit} {n}"
            report.rows_read += 1
            try:
                if isinstance(record, _Invalid):
                    raise record
                shape = _shape_for(record, format)
                report.shapes[shape] = report.shapes.get(shape, 0) + 1
                row = _parse_row(record, shape)
                rid = str(record["id"]) if record.get("id") is not None else f"{source.stem}:{n}"
                if rid in seen_ids:
                    raise _Invalid(f"duplicate id {rid!r}", key="duplicate id")
            except _Invalid as e:
                if not skip_invalid:
                    raise DataError(f"{p}, {where}: {e}. Fix the row, or skip such rows with "
                                    f"{SKIP_HINT}.") from None
                report._skip(Skipped(p, source.unit, n, str(e)), e.key)
                continue
            seen_ids.add(rid)
            rows.append({"id": rid, **row})
    report.rows_kept = len(rows)
    if report.skipped or report.damaged:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    if not rows:
        raise DataError(f"{report.source}: no valid rows ({report.summary()}).")
    return PreferenceDataset(rows, report)


def save_jsonl(rows: Iterable[dict], path: str) -> None:
    """Write rows as JSON lines (``.gz`` compresses)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
