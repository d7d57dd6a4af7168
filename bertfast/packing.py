"""Packing: a padded batch's real tokens laid back to back, and the way back.

The padding-free encoder (``BertModel.encode_packed``) and its CUDA-graph runner
(``bertfast.graphs``) both speak this layout: tokens (total_tokens, ...) with ``cu_seqlens``
offsets. It sits below both so that neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """A padded batch's real tokens back to back, and how to put them back."""

    indices: torch.Tensor | None  # (total_tokens,) flat positions of real tokens; None: all
    cu_seqlens: torch.Tensor  # (batch + 1,) int32 offsets
    max_seqlen: int
    batch: int
    seq: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor, lengths: list[int] | None = None) -> PackedBatch:
        """Pack by a (batch, seq) bool mask; with the rows' ``lengths`` known on the host
        (``prepare_inputs`` returns them) nothing here waits for the device."""
        batch, seq = mask.shape
        if lengths is None:
            lengths = mask.sum(dim=1).tolist()  # one host sync
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + length)
        cu_seqlens = torch.tensor(offsets, dtype=torch.int32).to(mask.device, non_blocking=True)
        indices = real_token_indices(mask, offsets[-1])
        return cls(indices, cu_seqlens, max(lengths, default=0), batch, seq)

    @classmethod
    def dense(cls, batch: int, seq: int, device: torch.device) -> PackedBatch:
        """Every position real: packing is a reshape."""
        cu_seqlens = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=device)
        return cls(None, cu_seqlens, seq, batch, seq)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(self.batch * self.seq, *t.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Padded positions come back as zeros."""
        if self.indices is None:
            return packed.view(self.batch, self.seq, *packed.shape[1:])
        out = packed.new_zeros(self.batch * self.seq, *packed.shape[1:])
        out.index_copy_(0, self.indices, packed)
        return out.view(self.batch, self.seq, *packed.shape[1:])


def real_token_indices(mask: torch.Tensor, total: int) -> torch.Tensor:
    """Flat positions of the True entries of ``mask`` in order, given their count ``total``.

    ``nonzero`` would wait for the device to learn the count; with it known on the host, each
    real token scatters its position to its rank and the padding to one spare slot.
    """
    flat = mask.reshape(-1)
    rank = torch.cumsum(flat, 0) - 1
    slot = torch.where(flat, rank, total)
    positions = torch.arange(flat.numel(), device=mask.device)
    indices = torch.empty(total + 1, dtype=torch.long, device=mask.device)
    return indices.scatter_(0, slot, positions)[:total]


__all__ = ["PackedBatch", "real_token_indices"]
