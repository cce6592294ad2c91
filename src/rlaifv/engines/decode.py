"""Decode many samples from one prefilled KV cache, with finished rows leaving the batch.

`HFEngine.sample` prefills each prompt once and repeats its cache over the N samples. `generate` would then decode
every row until the longest answer of the batch ends (a finished row keeps running on padding) and spend about a
third of a step in its own Python: processors, stopping criteria, input preparation. This loop does only what one
decoding setting needs -- temperature, top-p, stop tokens -- and drops the rows that have finished from the model's
batch and the cache once enough of them have (`compact_fraction`), so late steps run on the answers still being
written. Nothing from the model's `generation_config` applies (no repetition penalty, no top-k): the decoding
setting is exactly the one the caller states, the same for every sample.

Positions go on from the prompt's last one, + 1 per step on every axis: one axis for most models, three for
M-RoPE (Qwen-VL), whose text tokens carry the same position on all three.
"""

from __future__ import annotations

import torch


def _next_tokens(logits: torch.Tensor, temperature: float | None, top_p: float) -> torch.Tensor:
    """One token per row of next-token logits (b, V): greedy when temperature is None, else sampled."""
    if temperature is None:
        return logits.argmax(-1)  # (b,)
    probs = torch.softmax(logits / temperature, dim=-1)  # (b, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (b, V) each
        # keep the smallest prefix whose mass reaches top_p (the most likely token always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # (b, V)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1).squeeze(1)  # (b,)


@torch.no_grad()
def decode_from_cache(
    model,
    cache,
    last_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    last_position: torch.Tensor,
    max_new_tokens: int,
    stop_ids: set[int],
    temperature: float | None = None,
    top_p: float = 1.0,
    compact_fraction: float = 0.25,
) -> list[list[int] | None]:
    """New token ids per row, the stop token left out; None for a row whose logits were not finite (NaN or inf) at
    some step -- a broken checkpoint or an overflow, which no token can be sampled from -- so the caller can set
    that prompt aside while the other rows go on.

    `cache` holds every prompt token but the last, for B rows; `last_ids` (B, 1) is that last token, `last_position`
    (B,) or (3, B) its position, `attention_mask` (B, T) covers the whole prompt (left padding as 0). The cache is
    consumed:
    rows are removed from it as they finish. Finished rows are removed once they make up `compact_fraction` of the
    rows still in the batch (each removal copies the cache, so removing every row the step it ends would cost more
    than it saves).
    """
    n_rows = last_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(n_rows)]
    rows = torch.arange(n_rows)  # (b,): the output row of each batch row
    finished = torch.zeros(n_rows, dtype=torch.bool)  # (b,): ended, still in the batch until the next compaction
    broken = torch.zeros(n_rows, dtype=torch.bool)  # (B,): output rows whose logits were not finite
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long)
    tokens, mask, position = last_ids, attention_mask, last_position
    for _ in range(max_new_tokens):
        logits = model(input_ids=tokens, attention_mask=mask, position_ids=position[..., None], cache=cache,
                       use_cache=True).logits[:, -1, :].float()  # (b, V)
        bad = ~torch.isfinite(logits).all(-1)  # (b,): such a row ends here; its output is dropped
        logits = logits.masked_fill(bad[:, None], 0.0)  # any token will do for its last step (no device sync)
        chosen = _next_tokens(logits, temperature, top_p).cpu()  # (b,)
        bad = bad.cpu() & ~finished
        broken[rows[bad]] = True
        ends = (torch.isin(chosen, stop) | bad) & ~finished
        writing = ~finished & ~ends  # (b,): rows whose answer goes on
        for row, token in zip(rows[writing].tolist(), chosen[writing].tolist()):
            out[row].append(token)
        finished |= ends
        if finished.all():
            break
        if finished.sum() >= max(1, compact_fraction * len(rows)):
            keep = (~finished).nonzero().squeeze(1)  # (b',)
            rows, chosen, finished = rows[keep], chosen[keep], finished[keep]
            keep = keep.to(mask.device)
            cache.batch_select_indices(keep)
            mask, position = mask[keep], position[..., keep]
        tokens = chosen[:, None].to(mask.device)  # (b, 1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # (b, T + step)
        position = position + 1
    return [None if broken[i] else row for i, row in enumerate(out)]


__all__ = ["decode_from_cache"]
