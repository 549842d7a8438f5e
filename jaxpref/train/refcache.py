"""Reference log-probs computed once and cached on disk, keyed by a fingerprint of everything they depend on.

Fingerprint = hash of (reference weights, tokenized data, tokenizer name, lengths/buckets). A second run
with the same inputs loads the cache instead of running the reference model; any change gives a new key.
Each host writes its own copy (no shared filesystem needed), and progress is saved every
``save_every`` batches so an interrupted precompute resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable

import jax
import numpy as np

from jaxpref import paths

log = logging.getLogger(__name__)


def params_digest(params: Any) -> str:
    """Hash of every parameter's path, shape, dtype and bytes (one leaf on the host at a time)."""
    import xxhash

    h = xxhash.xxh64()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        arr = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.shape}|{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
    return h.hexdigest()


def data_digest(pairs) -> str:
    import xxhash

    h = xxhash.xxh64()
    for p in pairs:
        h.update(p.id.encode())
        for a in (p.prompt_ids, p.chosen_ids, p.rejected_ids):
            h.update(np.int64(len(a)).tobytes())
            h.update(np.ascontiguousarray(a, np.int32).tobytes())
    return h.hexdigest()


def fingerprint(weights_digest: str, pairs, tokenizer_name: str, settings: dict) -> str:
    blob = json.dumps({"weights": weights_digest, "data": data_digest(pairs), "tokenizer": tokenizer_name,
                       "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ReferenceCache:
    """``chosen``/``rejected`` reference log-probs ``[N]`` for the pairs of a batcher (indexed by pair index)."""

    def __init__(self, cache_dir: str, key: str, num_pairs: int):
        self.path = paths.join(cache_dir, f"ref_logps-{key}-host{jax.process_index()}.npz")
        self.partial_path = self.path.replace(".npz", ".partial.npz")
        self.num_pairs = num_pairs
        paths.makedirs(cache_dir)
        self.hit = False

    def load_or_compute(self, batcher, logps_fn: Callable[[dict], tuple[Any, Any, Any]], *, save_every: int = 20,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Return the cached arrays, computing (and saving) what is missing.

        ``logps_fn(local_batch) -> (chosen [P], rejected [P], pair_index [P])`` as host numpy arrays of the
        *global* batch (so every host fills the whole table).
        """
        if paths.exists(self.path):
            try:
                f = paths.load_npz(self.path)
                chosen, rejected = f["chosen"], f["rejected"]
                if chosen.shape == rejected.shape == (self.num_pairs,):
                    self.hit = True
                    log.info("reference log-probs: cache hit %s", self.path)
                    return chosen, rejected
                log.warning("reference log-probs: %s holds %s values for %d pairs; recomputing", self.path,
                            chosen.shape, self.num_pairs)
            except (OSError, ValueError, KeyError, EOFError) as e:
                log.warning("reference log-probs: %s is unreadable (%s); recomputing", self.path, e)
        chosen = np.zeros(self.num_pairs, np.float32)
        rejected = np.zeros(self.num_pairs, np.float32)
        done = np.zeros(self.num_pairs, bool)
        if paths.exists(self.partial_path):
            try:
                f = paths.load_npz(self.partial_path)
                chosen, rejected, done = f["chosen"], f["rejected"], f["done"]
                log.info("reference log-probs: resuming, %d of %d done", int(done.sum()), self.num_pairs)
            except (OSError, ValueError, KeyError, EOFError) as e:  # a torn file from a killed run: start over
                log.warning("reference log-probs: ignoring the unreadable partial file %s (%s)", self.partial_path, e)
        from tqdm.auto import tqdm

        plan = batcher.epoch_plan(0)
        todo = [ix for ix in plan if not all(done[i] for i in ix if i >= 0)]
        bar = tqdm(todo, desc="reference log-probs", disable=not progress or jax.process_index() != 0, leave=False)
        for n, indices in enumerate(bar, start=1):
            c, r, idx = logps_fn(batcher.make_batch(indices))
            real = idx >= 0
            chosen[idx[real]], rejected[idx[real]], done[idx[real]] = c[real], r[real], True
            if n % save_every == 0:  # atomic (paths.write_bytes), so a kill never leaves a torn file
                paths.save_npz(self.partial_path, chosen=chosen, rejected=rejected, done=done)
        if not done.all():
            raise RuntimeError(f"reference precompute left {int((~done).sum())} pairs without log-probs")
        paths.save_npz(self.path, chosen=chosen, rejected=rejected)
        paths.remove(self.partial_path)
        return chosen, rejected
