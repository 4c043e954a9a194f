"""Attention for padding-free packed rows on the transformers backend: SDPA once per joined row.

TRL's padding-free collator joins a batch into one row whose positions restart at each original
row. transformers' SDPA keeps the rows apart with a block mask over the whole joined row. That
mask sends SDPA to a kernel that computes every pair of positions in the joined row, and builds
a (tokens x tokens) mask for every forward. Attending row by row runs the fused causal kernel
that unpacked rows get, on the pairs that count, and needs no mask.
"""

from __future__ import annotations

from typing import Any

NAME = "lowres_packed_sdpa"


def row_bounds(position_ids: Any) -> list[tuple[int, int]] | None:
    """(start, end) of each joined row of a one-row batch, or None if positions never restart.
    Computed once per forward and kept on the tensor, which every layer gets (one GPU sync)."""
    cached = getattr(position_ids, "_lowres_row_bounds", False)
    if cached is not False:
        return cached
    flat = position_ids[0]
    restarts = (flat[1:] != flat[:-1] + 1).nonzero().flatten() + 1
    starts = [0, *restarts.tolist()]
    bounds = None
    if len(starts) > 1:
        bounds = list(zip(starts, [*starts[1:], flat.shape[0]], strict=True))
    position_ids._lowres_row_bounds = bounds
    return bounds


def packed_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' SDPA for every other case; per joined row when the batch is one packed row
    and the layer attends causally over the whole context (no sliding window, no softcapping)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    plain = (
        position_ids is None
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]  # decoding against a cache
        or kwargs.get("sliding_window") is not None
        or getattr(module, "is_causal", True) is False
        or getattr(getattr(module, "config", None), "attn_logit_softcapping", None)
    )
    bounds = None if plain else row_bounds(position_ids)
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    rows = [
        sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            dropout,
            scaling,
            True,
        )[0]
        for start, end in bounds
    ]
    return torch.cat(rows, dim=1), None  # (1, tokens, heads, head_dim), as SDPA returns


def register() -> str:
    """Make NAME an attention implementation transformers can be switched to (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_packed_attention(model: Any) -> None:
    """Switch a (peft-wrapped) transformers model to per-row attention for packed batches."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
