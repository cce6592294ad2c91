"""Summed log-probs of the chosen and rejected responses of each pair, from one forward per pair.

DPO needs log p(chosen | image, prompt) and log p(rejected | image, prompt). Two sequences per pair encode the
image and the prompt twice; here one packed row (engines.packing) holds prompt + chosen + rejected, with a block
attention mask and positions restarting after the prompt, so the image goes through the vision tower once and the
prompt through the language model once. Unlike reusing a KV cache, this is an ordinary forward, so it also works
under gradient checkpointing (which drops a passed-in cache).

Token t of a response is predicted by the logits one position earlier -- except each response's first token, which
both responses read from the prompt's last position (the rejected response does not follow the chosen one).
`separate_logps` computes the same numbers the plain way, two sequences per pair; tests pin their agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlaifv.engines.family import packed_inputs, plain_inputs
from rlaifv.engines.fastpath import trusted
from rlaifv.engines.packing import pack
from rlaifv.engines.transfer import to_device
from rlaifv.logps.encode import EncodedPair


@dataclass
class ResponseLogps:
    """Per-pair response log-probs and lengths, in batch order."""

    chosen: torch.Tensor  # (B,) sum over the chosen response's tokens of log p(token | everything before it)
    rejected: torch.Tensor  # (B,) the same for the rejected response
    chosen_tokens: torch.Tensor  # (B,) tokens in each chosen response
    rejected_tokens: torch.Tensor  # (B,) tokens in each rejected response


CHUNK_ELEMENTS = 2**24  # logits per fp32 chunk of `token_logps` (64 MB)


class _TokenLogps(torch.autograd.Function):
    """log softmax(logits[rows[n], cols[n]])[targets[n]] in fp32, a chunk of rows at a time.

    The plain `logits[rows, cols].float().log_softmax(-1).gather(...)` keeps an (N, V) copy of the logits, an fp32
    one and the fp32 log-softmax for the backward pass, and the backward makes two more (N, V) fp32 tensors: for 4
    pairs of 150-word answers and a 32k vocabulary ~0.7 GB. This keeps only the logits it is given and a logsumexp
    per row, and recomputes the softmax chunk by chunk in the backward pass.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor):
        n = targets.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)  # (N,)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)  # (N,)
        step = max(1, CHUNK_ELEMENTS // logits.shape[-1])
        for lo in range(0, n, step):
            x = logits[rows[lo : lo + step], cols[lo : lo + step]].float()  # (n, V)
            lse[lo : lo + step] = torch.logsumexp(x, -1)
            out[lo : lo + step] = x.gather(-1, targets[lo : lo + step, None])[:, 0] - lse[lo : lo + step]
        ctx.save_for_backward(logits, rows, cols, targets, lse)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, rows, cols, targets, lse = ctx.saved_tensors
        grad_logits = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)  # (R, C, V)
        flat = grad_logits.view(-1, logits.shape[-1])  # (R * C, V)
        step = ctx.step
        for lo in range(0, targets.shape[0], step):
            r, c, g = rows[lo : lo + step], cols[lo : lo + step], grad[lo : lo + step, None]  # g (n, 1)
            x = logits[r, c].float()  # (n, V)
            dx = x.sub_(lse[lo : lo + step, None]).exp_().mul_(-g)  # -softmax * g
            dx.scatter_add_(-1, targets[lo : lo + step, None], g)  # + g at the target
            # a position may predict twice (the prefix's last token starts every response); index_add_ sums the
            # duplicates in a fixed order, where index_put_(accumulate=True) on a CPU does not
            flat.index_add_(0, r * logits.shape[1] + c, dx.to(logits.dtype))
        return grad_logits, None, None, None


def token_logps(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[rows[n], cols[n]])[targets[n]] per n, in fp32: logits (R, C, V), the rest (N,) -> (N,)."""
    return _TokenLogps.apply(logits, rows, cols, targets)


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row: logits (N, V), targets (N,) -> (N,), in fp32."""
    n = torch.arange(targets.shape[0], device=logits.device)
    return token_logps(logits[None], torch.zeros_like(n), n, targets)


def mask_dtype(param: torch.Tensor, device: torch.device) -> torch.dtype:
    """The dtype attention runs in: autocast's when it is on, else the weights'.

    A mask in another dtype is cast by autocast in every layer, and the memory-efficient kernel keeps each layer's
    copy for the backward pass.
    """
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else param.dtype


def packed_logps(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int) -> ResponseLogps:
    """Response log-probs of a batch of pairs, one packed row per pair: prefix = prompt, suffixes = chosen, rejected.

    Only the positions that predict response tokens go through the LM head (`logits_to_keep`): the image and prompt
    positions are most of the row and their logits are never needed.
    """
    first = next(model.parameters())  # works through DDP / peft wrappers, which hide `.device` and `.dtype`
    device = first.device
    packs = [pack(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs]
    rows, positions, targets, owner = [], [], [], []  # one entry per response token of the batch
    for b, p in enumerate(packs):
        last_prompt = p.starts[0] - 1  # predicts the first token of both responses
        for k, (start, end) in enumerate(zip(p.starts, p.ends)):
            n = end - start + 1
            rows += [b] * n
            positions += [last_prompt, *range(start, end)]
            targets += p.input_ids[start : end + 1]
            owner += [2 * b + k] * n  # 2b = chosen of pair b, 2b + 1 = its rejected
    keep = sorted(set(positions))
    column = {pos: i for i, pos in enumerate(keep)}
    # ids (B, T), positions (B, T) or (3, B, T), the family's masks, the pairs' images
    batch = packed_inputs(model, packs, [p.vision for p in pairs], pad_id, mask_dtype(first, device), device)
    # every index on the device before the forward is queued: none of the copies waits for it
    keep_t, owner_t = to_device(torch.tensor(keep), device), to_device(torch.tensor(owner), device)  # (K,), (N,)
    rows_t, targets_t = to_device(torch.tensor(rows), device), to_device(torch.tensor(targets), device)  # (N,)
    cols_t = to_device(torch.tensor([column[pos] for pos in positions]), device)  # (N,)
    lengths = _lengths(pairs, device)
    logits = model(**batch, logits_to_keep=keep_t, use_cache=False).logits  # (B, K, V)
    logps = token_logps(logits, rows_t, cols_t, targets_t)  # (N,)
    sums = torch.zeros(2 * len(pairs), device=device).index_add(0, owner_t, logps)  # (2B,)
    return ResponseLogps(sums[0::2], sums[1::2], *lengths)


def separate_logps(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int) -> ResponseLogps:
    """The same numbers the plain way: prompt + chosen and prompt + rejected as two right-padded sequences.

    Twice the image and prompt compute of `packed_logps`; kept as the reference its results are tested against.
    """
    device = next(model.parameters()).device
    seqs = [p.prompt_ids + r for p in pairs for r in (p.chosen_ids, p.rejected_ids)]  # 2B rows
    batch = plain_inputs(model, seqs, [p.vision for p in pairs for _ in range(2)], pad_id, device)
    ids = batch["input_ids"]  # (2B, T), right-padded
    logits = model(**batch, use_cache=False).logits  # (2B, T, V)
    sums = []
    for i, s in enumerate(seqs):
        n_prompt = len(pairs[i // 2].prompt_ids)
        target = ids[i, n_prompt : len(s)]  # (L,)
        sums.append(_token_logps(logits[i, n_prompt - 1 : len(s) - 1], target).sum())  # logits (L, V)
    flat = torch.stack(sums)  # (2B,)
    return ResponseLogps(flat[0::2], flat[1::2], *_lengths(pairs, device))


def response_logps(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int) -> ResponseLogps:
    """`packed_logps` where it agrees with `separate_logps` on the run's first pairs (engines.fastpath, checked
    once per model), `separate_logps` otherwise: what the DPO step, the reference pass and reward scoring use."""

    def per_token(logps: ResponseLogps) -> torch.Tensor:  # (2B,): mean log-prob per token of each response
        return torch.cat([logps.chosen / logps.chosen_tokens, logps.rejected / logps.rejected_tokens])

    probe, first = pairs[:2], next(model.parameters())
    if trusted(model, "logps.packed", lambda: per_token(packed_logps(model, probe, pad_id)),
               lambda: per_token(separate_logps(model, probe, pad_id)), mask_dtype(first, first.device)):
        return packed_logps(model, pairs, pad_id)
    return separate_logps(model, pairs, pad_id)


def _lengths(pairs: list[EncodedPair], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = to_device(torch.tensor([len(p.chosen_ids) for p in pairs]), device)  # (B,)
    rejected = to_device(torch.tensor([len(p.rejected_ids) for p in pairs]), device)  # (B,)
    return chosen, rejected
