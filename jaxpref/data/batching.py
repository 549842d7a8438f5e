"""Static-shape batches of preference pairs: length buckets, optional packing, per-host shards, resumable order.

A batch holds ``P`` pairs (``pairs_per_batch``, global) as numpy arrays::

    input_ids, attention_mask, positions, segment_ids, loss_mask, sequence_ids   [R, L] int32
    score_index, score_mask                                                       [G, W] int32
    pair_weight [P] float32 (the pair's weight, default 1; 0 = padding pair), pair_index [P] int32 (-1 = padding)
    pair_group [P] int32 (the pair's group, default 0; e.g. APO's adversarial pairs are 1)
    chosen_lengths, rejected_lengths [P] float32 (response tokens)

The LM head runs only on the positions whose targets are response tokens (completion tokens are about a
third of the real tokens and the vocabulary projection is the largest matmul). The rows are split into
``G`` contiguous groups of ``R / G`` rows (``score_groups``: one per device shard of the batch, so a group
never spans devices; one per row when packing), and ``score_index[g]`` lists the response positions of group
``g`` as flat indices into its rows in the next-token frame -- ``r * (L - 1) + t`` for hidden state ``t`` of
the group's ``r``-th row, which predicts token ``t + 1`` -- left-compacted and padded (``score_mask`` 0).
Pooling a group's rows removes the per-row padding to the longest response: on the benchmark's HH pairs the
head scores 3.2x fewer slots than with one list per row. ``W`` is the smallest of 64, 96, 128, 192, 256,
384, ... (steps of 1.5x and 4/3x, so few shapes compile) that holds the most response tokens of any group of
the global batch, at most ``(R / G) * (L - 1)``.

Sequence ``2i`` is pair ``i``'s chosen response, ``2i + 1`` its rejected one; ``sequence_ids`` says
which sequence each token belongs to (``2P`` on padding), so per-sequence log-probs are one
``segment_sum`` whether or not rows are packed (:func:`jaxpref.logprobs.sequence_sums`). ``loss_mask``
marks the response tokens (the tokens whose log-probs are scored; the logit at ``t - 1`` scores token
``t``). ``positions`` restart at 0 in every sequence; ``segment_ids`` (1, 2, ... within a row, 0 on
padding) keep packed sequences from attending to each other.

Without packing ``R = 2P`` (one sequence per row, interleaved chosen/rejected) and ``L`` is the smallest
bucket that fits the batch's longest sequence, so XLA compiles one program per bucket, not per batch.
With packing, ``R`` rows of the largest bucket are filled first-fit with whole pairs (at most ``P``).

Multi-host: every host computes the same global order (from the seed and epoch) and materialises only
its contiguous slice of each batch (pairs ``[h P/H, (h+1) P/H)``), ready for
``jax.make_array_from_process_local_data``. The order is a pure function of ``(seed, epoch, step)``,
so :meth:`PairBatcher.state_dict` is two integers and a restored iterator yields exactly the remaining
batches.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from jaxpref.data.formats import DataError
from jaxpref.data.tokenize import TokenizedPair

BATCH_KEYS = ("input_ids", "attention_mask", "positions", "segment_ids", "loss_mask", "sequence_ids")


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How pairs become batches.

    * ``pairs_per_batch``: global pairs per batch ``P`` (divisible by the host count).
    * ``buckets``: the allowed padded lengths; the largest is the longest sequence accepted.
    * ``packing``: pack whole pairs into ``rows_per_batch`` rows of the largest bucket.
    * ``rows_per_batch``: packed rows per batch (default ``P``: half the unpacked row count).
    * ``shuffle``/``seed``: deterministic shuffling per epoch.
    * ``sort_window``: sort pairs by length inside windows of this many batches before batching (less
      padding; 0 = off), then shuffle the batch order.
    * ``drop_last``: drop a final partial batch instead of padding it with zero-weight pairs.
    * ``skip_invalid``: skip (count) pairs longer than the largest bucket instead of raising.
    * ``score_groups``: the global number of row groups whose response positions are pooled for the LM head
      (the device shards of the batch; see the module docstring; default one per host). Ignored when packing
      (one group per row).
    """

    pairs_per_batch: int = 8
    buckets: tuple[int, ...] = (128, 256, 512, 1024)
    packing: bool = False
    rows_per_batch: int | None = None
    shuffle: bool = True
    seed: int = 0
    sort_window: int = 8
    drop_last: bool = False
    skip_invalid: bool = False
    score_groups: int | None = None


def score_width_bucket(needed: int, capacity: int) -> int:
    """The score width for ``needed`` response positions: the smallest of 64, 96, 128, 192, 256, 384, ... that
    holds them, capped at ``capacity`` (all positions of a group)."""
    width = 64
    while width < needed:
        width = width * 3 // 2 if width & (width - 1) == 0 else width * 4 // 3
    return min(width, capacity)


class PairBatcher:
    """Iterates static-shape batches over tokenized pairs, epoch after epoch; resumable via ``state_dict``."""

    def __init__(self, pairs: Sequence[TokenizedPair], options: BatchOptions, *, pad_id: int = 0,
                 process_index: int = 0, process_count: int = 1):
        if options.pairs_per_batch % process_count:
            raise ValueError(f"pairs_per_batch={options.pairs_per_batch} is not divisible by {process_count} hosts.")
        self.score_groups = options.score_groups or process_count
        if not options.packing and (options.pairs_per_batch % self.score_groups or self.score_groups % process_count):
            raise ValueError(f"score_groups={self.score_groups} must divide pairs_per_batch="
                             f"{options.pairs_per_batch} and be a multiple of the {process_count} hosts.")
        self.options = options
        self.pad_id = pad_id
        self.process_index, self.process_count = process_index, process_count
        self.buckets = tuple(sorted(options.buckets))
        max_len = self.buckets[-1]
        kept, skipped = [], []
        for p in pairs:
            longest = len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))
            if longest > max_len:
                if not options.skip_invalid:
                    raise DataError(f"row {p.id}: {longest} tokens, longer than the largest bucket {max_len}; add a "
                                    "larger bucket, lower max_length, or pass skip_invalid=True.")
                skipped.append(p.id)
                continue
            kept.append(p)
        if not kept:
            raise DataError("no pair fits the largest bucket.")
        self.pairs = kept
        self.skipped_ids = skipped
        self.epoch = 0
        self.step_in_epoch = 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    # ---- order ---------------------------------------------------------------------------------------

    def _lengths(self) -> np.ndarray:
        return np.array([len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in self.pairs])

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """The pair indices of every batch of ``epoch`` (a pure function of seed and epoch)."""
        if self._plan_cache and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        o = self.options
        rng = np.random.default_rng([o.seed, epoch])
        order = rng.permutation(len(self.pairs)) if o.shuffle else np.arange(len(self.pairs))
        lengths = self._lengths()
        if o.packing:
            plan = self._pack(order, lengths)
        else:
            if o.sort_window:
                window = o.sort_window * o.pairs_per_batch
                order = np.concatenate([
                    chunk[np.argsort(lengths[chunk], kind="stable")]
                    for chunk in np.array_split(order, max(1, -(-len(order) // window)))
                ])
            plan = [list(order[i:i + o.pairs_per_batch]) for i in range(0, len(order), o.pairs_per_batch)]
            if o.drop_last and len(plan[-1]) < o.pairs_per_batch:
                plan.pop()
            if o.shuffle and o.sort_window:
                plan = [plan[i] for i in rng.permutation(len(plan))]
        self._plan_cache = (epoch, plan)
        return plan

    def _pack(self, order: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
        """First-fit packing of whole pairs (both sequences) into rows; a batch closes when a pair does not fit
        or it holds ``P`` pairs. Each host packs its own share of rows, so a pair counts against the rows of
        the host it will live on."""
        o = self.options
        width = self.buckets[-1]
        rows_total = o.rows_per_batch or o.pairs_per_batch
        if rows_total % self.process_count:
            raise ValueError(f"rows_per_batch={rows_total} is not divisible by {self.process_count} hosts.")
        plan, current, fill = [], [], None
        pairs_per_host = o.pairs_per_batch // self.process_count
        rows_per_host = rows_total // self.process_count

        def fits(fill_host, seq_lens):
            trial = list(fill_host)
            for n in seq_lens:
                for r in range(len(trial)):
                    if trial[r] + n <= width:
                        trial[r] += n
                        break
                else:
                    return None
            return trial

        for idx in order:
            p = self.pairs[idx]
            seqs = [len(p.prompt_ids) + len(p.chosen_ids), len(p.prompt_ids) + len(p.rejected_ids)]
            if fill is None:
                fill = [[0] * rows_per_host for _ in range(self.process_count)]
            host = len(current) // pairs_per_host
            trial = fits(fill[host], seqs) if host < self.process_count else None
            if trial is None and len(current) % pairs_per_host and host + 1 < self.process_count:
                # this host's rows are full: pad its share with empty pairs and move on to the next host
                current += [-1] * (pairs_per_host - len(current) % pairs_per_host)
                host += 1
                trial = fits(fill[host], seqs)
            if trial is None:
                plan.append(current)
                current, fill = [], [[0] * rows_per_host for _ in range(self.process_count)]
                host = 0
                trial = fits(fill[0], seqs)
            fill[host] = trial
            current.append(int(idx))
            if len(current) == o.pairs_per_batch:
                plan.append(current)
                current, fill = [], None
        if current and not o.drop_last:
            plan.append(current)
        return plan

    @property
    def batches_per_epoch(self) -> int:
        return len(self.epoch_plan(self.epoch))

    # ---- materialisation -----------------------------------------------------------------------------

    def _local_slice(self, indices: list[int]) -> list[int]:
        per_host = self.options.pairs_per_batch // self.process_count
        padded = list(indices) + [-1] * (self.options.pairs_per_batch - len(indices))
        return padded[self.process_index * per_host:(self.process_index + 1) * per_host]

    def make_batch(self, indices: list[int]) -> dict[str, np.ndarray]:
        """This host's part of the batch made of pair ``indices`` (``-1`` = padding pair)."""
        local = self._local_slice(indices)
        first_pair = self.process_index * len(local)  # global index of this host's first pair in the batch
        if self.options.packing:
            rows = (self.options.rows_per_batch or self.options.pairs_per_batch) // self.process_count
            width = self.buckets[-1]
        else:
            rows = 2 * len(local)
            # the global batch's longest pair, so that every host pads to the same bucket
            longest = max((self.pairs[i].length for i in indices if i >= 0), default=1)
            width = next(b for b in self.buckets if b >= longest)
        num_sequences = 2 * self.options.pairs_per_batch
        arrays = {k: np.zeros((rows, width), np.int32) for k in BATCH_KEYS}
        arrays["input_ids"][:] = self.pad_id
        arrays["sequence_ids"][:] = num_sequences
        fill = np.zeros(rows, np.int64)
        segments = np.zeros(rows, np.int64)
        weight = np.zeros(len(local), np.float32)
        index = np.full(len(local), -1, np.int32)
        group = np.zeros(len(local), np.int32)
        lengths = np.zeros((2, len(local)), np.float32)
        for j, i in enumerate(local):
            if i < 0:
                continue
            p = self.pairs[i]
            weight[j], index[j], group[j] = p.weight, i, p.group
            for k, response in enumerate((p.chosen_ids, p.rejected_ids)):
                seq = np.concatenate([p.prompt_ids, response])
                n = len(seq)
                lengths[k, j] = len(response)
                if self.options.packing:
                    row = int(np.argmax(fill + n <= width))  # first row with room (the plan guarantees one)
                else:
                    row = 2 * j + k
                start = int(fill[row])
                if start + n > width:
                    raise AssertionError("packing plan overflowed a row")
                segments[row] += 1
                sl = slice(start, start + n)
                arrays["input_ids"][row, sl] = seq
                arrays["attention_mask"][row, sl] = 1
                arrays["positions"][row, sl] = np.arange(n)
                arrays["segment_ids"][row, sl] = segments[row]
                arrays["loss_mask"][row, start + len(p.prompt_ids):start + n] = 1
                arrays["sequence_ids"][row, sl] = 2 * (first_pair + j) + k
                fill[row] += n
        if self.options.packing:
            groups, score_width = rows, width - 1
        else:  # the most response tokens of any group of the global batch, so every host agrees on W
            groups = self.score_groups // self.process_count
            per_group = self.options.pairs_per_batch // self.score_groups
            padded = list(indices) + [-1] * (self.options.pairs_per_batch - len(indices))
            needed = max(sum(len(self.pairs[i].chosen_ids) + len(self.pairs[i].rejected_ids)
                             for i in padded[g * per_group:(g + 1) * per_group] if i >= 0)
                         for g in range(self.score_groups))
            score_width = score_width_bucket(needed, (rows // groups) * (width - 1))
        targets = arrays["loss_mask"][:, 1:].reshape(groups, -1)  # each group's rows, flattened
        arrays["score_index"] = np.zeros((groups, score_width), np.int32)
        arrays["score_mask"] = np.zeros((groups, score_width), np.int32)
        for g in range(groups):
            where = np.flatnonzero(targets[g])
            arrays["score_index"][g, :len(where)] = where
            arrays["score_mask"][g, :len(where)] = 1
        arrays.update(pair_weight=weight, pair_index=index, pair_group=group, chosen_lengths=lengths[0], rejected_lengths=lengths[1])
        return arrays

    # ---- iteration and state -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            plan = self.epoch_plan(self.epoch)
            while self.step_in_epoch < len(plan):
                batch = self.make_batch(plan[self.step_in_epoch])
                self.step_in_epoch += 1
                yield batch
            self.epoch += 1
            self.step_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "step_in_epoch": int(self.step_in_epoch), "seed": int(self.options.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.options.seed)) != self.options.seed:
            raise ValueError(f"iterator state was saved with seed {state['seed']}, this batcher has {self.options.seed}.")
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])

    def padding_efficiency(self, epoch: int = 0) -> float:
        """Real tokens / padded tokens over one epoch's batches (this host)."""
        real = padded = 0
        for indices in self.epoch_plan(epoch):
            b = self.make_batch(indices)
            real += int(b["attention_mask"].sum())
            padded += b["attention_mask"].size
        return real / max(padded, 1)
