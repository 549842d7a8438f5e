"""Label-noise injection with the ground truth recorded."""

from __future__ import annotations

import numpy as np

from jaxpref.data.formats import PreferenceDataset


def flip_labels(dataset: PreferenceDataset, rate: float, seed: int = 0) -> tuple[PreferenceDataset, np.ndarray]:
    """Swap chosen and rejected (and their scores) for ``round(rate * N)`` rows picked by a seeded permutation.

    Returns ``(new_dataset, flipped)`` where ``flipped[i]`` is True when row ``i`` was swapped; each row
    also carries ``"flipped": bool`` so the ground truth travels with it (e.g. through filtering by id).
    The input is not modified.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"flip rate must be in [0, 1], got {rate}.")
    n = len(dataset)
    flipped = np.zeros(n, bool)
    flipped[np.random.default_rng(seed).permutation(n)[: int(round(rate * n))]] = True
    rows = []
    for row, flip in zip(dataset, flipped):
        new = dict(row)
        if flip:
            new["chosen"], new["rejected"] = row["rejected"], row["chosen"]
            if "score_chosen" in row and "score_rejected" in row:
                new["score_chosen"], new["score_rejected"] = row["score_rejected"], row["score_chosen"]
        new["flipped"] = bool(flip) ^ bool(row.get("flipped", False))
        rows.append(new)
    return PreferenceDataset(rows, dataset.report), flipped
