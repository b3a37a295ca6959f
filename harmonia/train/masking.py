"""MAE-style patch dropping for masked acoustic-token prediction (docs/beats.md §6.4).

Per clip, `round(valid · (1 − mask_ratio))` patches are kept, chosen by sorting uniform noise
(padded patches get +inf noise, so they are never kept), then re-sorted into their original order.
The encoder sees only the kept patches; clips that keep fewer than the batch maximum are padded
at the end of the kept sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KeptPatches:
    """ids_BK: kept patch indices in original order (padded slots repeat index 0);
    pad_BK: True for the padded slots; kept_BP: True for kept patches; masked_BP: True for
    patches the loss is computed on (valid and not kept)."""

    ids_BK: Tensor
    pad_BK: Tensor
    kept_BP: Tensor
    masked_BP: Tensor


def sample_kept(padding_mask_BP: Tensor, mask_ratio: float, generator: torch.Generator | None = None) -> KeptPatches:
    """Choose the kept patches. padding_mask_BP: True = padding. Uses `generator` (on CPU) only."""
    B, P = padding_mask_BP.shape
    device = padding_mask_BP.device
    valid_B = (~padding_mask_BP).sum(1)
    keep_B = torch.round(valid_B.double() * (1.0 - mask_ratio)).long().clamp(min=1)
    keep_B = torch.minimum(keep_B, valid_B.clamp(min=1))
    noise_BP = torch.rand(B, P, generator=generator).to(device).masked_fill(padding_mask_BP, float("inf"))
    order_BP = noise_BP.argsort(dim=1)
    K = int(keep_B.max())
    slot_BK = torch.arange(K, device=device)[None].expand(B, K)
    pad_BK = slot_BK >= keep_B[:, None]
    # unused slots sort last (key P), then are pointed at patch 0 and flagged as padding
    ids_BK = order_BP[:, :K].masked_fill(pad_BK, P).sort(dim=1).values.masked_fill(pad_BK, 0)
    pad_BK = pad_BK | padding_mask_BP.gather(1, ids_BK)  # a clip with no valid patch keeps nothing
    kept_BP = torch.zeros(B, P + 1, dtype=torch.bool, device=device)  # column P collects padded slots
    kept_BP.scatter_(1, ids_BK.masked_fill(pad_BK, P), True)
    kept_BP = kept_BP[:, :P]
    return KeptPatches(ids_BK, pad_BK, kept_BP, ~kept_BP & ~padding_mask_BP)


def gather_patches(x_BPE: Tensor, ids_BK: Tensor) -> Tensor:
    """(B, P, E), (B, K) -> (B, K, E)."""
    return x_BPE.gather(1, ids_BK[..., None].expand(-1, -1, x_BPE.shape[-1]))
