"""Preference data: loading and validation, tokenization, static-shape batches, label noise.

    from jaxpref.data import load_preferences, DataError
    rows = load_preferences(path, format="auto", skip_invalid=False)
"""

from jaxpref.data.batching import BATCH_KEYS, BatchOptions, PairBatcher, sequence_sums
from jaxpref.data.formats import (
    SHIPPED_HH,
    DataError,
    LoadReport,
    PreferenceDataset,
    load_preferences,
    save_jsonl,
    split_hh_dialogue,
)
from jaxpref.data.noise import flip_labels
from jaxpref.data.tokenize import (
    HFTokenizer,
    IntTokenizer,
    SentencePieceTokenizer,
    TokenizedPair,
    TokenizeOptions,
    load_tokenizer,
    mistral_tokenizer_path,
    tokenize_dataset,
    tokenize_pair,
)

__all__ = [
    "BATCH_KEYS", "BatchOptions", "DataError", "HFTokenizer", "IntTokenizer", "LoadReport", "PairBatcher", "PreferenceDataset",
    "SHIPPED_HH", "SentencePieceTokenizer", "TokenizeOptions", "TokenizedPair", "flip_labels", "load_preferences",
    "load_tokenizer", "mistral_tokenizer_path", "save_jsonl", "sequence_sums", "split_hh_dialogue",
    "tokenize_dataset", "tokenize_pair",
]
