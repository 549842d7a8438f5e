"""Preference data: loading and validation, tokenization, static-shape batches, label noise.

    from jaxpref.data import load_preferences, DataError
    rows = load_preferences(path, format="auto", skip_invalid=False)   # rows.report: shapes, skips, damage
    pairs = tokenize_dataset(rows, load_tokenizer(tok_path), TokenizeOptions())  # pairs.report: skips, truncation
"""

from jaxpref.data.batching import BATCH_KEYS, BatchOptions, PairBatcher, score_width_bucket
from jaxpref.data.formats import (
    SHAPES,
    SHIPPED_HH,
    DataError,
    LoadReport,
    PreferenceDataset,
    Skipped,
    available_splits,
    detect_shape,
    has_test_split,
    load_preferences,
    save_jsonl,
    split_hh_dialogue,
    split_shared_prefix,
)
from jaxpref.data.noise import flip_labels
from jaxpref.data.tokenize import (
    ChatTemplateError,
    HFTokenizer,
    IntTokenizer,
    RowTokenizeError,
    SentencePieceTokenizer,
    TokenizedPair,
    TokenizedPairs,
    TokenizeOptions,
    TokenizeReport,
    load_tokenizer,
    read_chat_template,
    mistral_tokenizer_path,
    tokenize_dataset,
    tokenize_pair,
)

__all__ = [
    "BATCH_KEYS", "BatchOptions", "ChatTemplateError", "DataError", "HFTokenizer", "IntTokenizer", "LoadReport",
    "PairBatcher", "PreferenceDataset", "score_width_bucket", "RowTokenizeError", "SHAPES", "SHIPPED_HH", "SentencePieceTokenizer",
    "Skipped", "TokenizeOptions", "TokenizeReport", "TokenizedPair", "TokenizedPairs", "available_splits",
    "detect_shape", "flip_labels", "has_test_split", "load_preferences", "load_tokenizer", "mistral_tokenizer_path",
    "read_chat_template", "save_jsonl", "split_hh_dialogue", "split_shared_prefix",
    "tokenize_dataset", "tokenize_pair",
]
