"""The run's micro-batches, each derived from (seed, epoch, index) alone: a resumed run has no iterator to restore."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lorakit.data.batching import batch_order, collate_packed, pack_order, padding_waste
from lorakit.data.tokenize import IGNORE_INDEX, TokenizedExample
from lorakit.train.distributed import Processes


class MicroBatches:
    """Micro-batch ``m`` of the whole run, derived from (seed, epoch): no iterator state to save or restore.

    With ``capacity`` (packing), a batch is ``batch_size`` rows of several examples each, up to ``capacity`` tokens.
    """

    def __init__(
        self,
        examples: list[TokenizedExample],
        batch_size: int,
        seed: int,
        pad_id: int,
        procs: Processes | None = None,
        pad_to_multiple_of: int = 1,
        capacity: int | None = None,
    ) -> None:
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.pad_to_multiple_of, self.capacity = pad_to_multiple_of, capacity
        self.procs = procs or Processes()  # in a process group: batch_size is the global batch, [m] this rank's slice
        self.lengths = [len(e.input_ids) for e in examples]
        self._epoch: tuple[int, list[list[list[int]]]] | None = None
        self.per_epoch = len(self.order(0))

    def order(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's batches; a batch is a list of rows, a row a list of example indices (one unless packing)."""
        if self._epoch is None or self._epoch[0] != epoch:
            if self.capacity:
                batches = pack_order(self.lengths, self.capacity, self.batch_size, self.seed, epoch)
            else:
                batches = [[[i] for i in b] for b in batch_order(self.lengths, self.batch_size, self.seed, epoch)]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def padding(self, epoch: int = 0) -> float:
        """Share of an epoch's padded positions that are padding."""
        rows = [row for batch in self.order(epoch) for row in batch]
        lengths = [sum(self.lengths[i] for i in row) for row in rows]
        k = iter(range(len(rows)))
        return padding_waste(
            lengths, [[next(k) for _ in batch] for batch in self.order(epoch)], self.pad_to_multiple_of
        )

    def __getitem__(self, m: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(m, self.per_epoch)
        rows = self.order(epoch)[index]
        if not self.capacity:
            return self.procs.batch(self.examples, [row[0] for row in rows], self.pad_id, self.pad_to_multiple_of)
        mine = self.procs.part(rows)
        batch = collate_packed([[self.examples[i] for i in row] for row in mine or rows[:1]], self.pad_id,
                               self.pad_to_multiple_of)  # fmt: skip
        if not mine:  # a short last batch left this rank nothing: one row with no loss still joins the all-reduce
            batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        return batch


def complete_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch with every key the loss reads: a missing mask is all ones, missing labels are the input ids."""
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs input_ids, got keys {sorted(batch)}")
    out = dict(batch)
    out.setdefault("attention_mask", torch.ones_like(out["input_ids"]))
    out.setdefault("labels", out["input_ids"])
    return out
