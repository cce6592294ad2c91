"""Summed log-probs of responses behind one prompt -- DPO's chosen and rejected, best-of-N's k answers -- the one
local computation of response log-probs (a served model's are engines.openai_vlm.OpenAIEngine.response_logps).

Scoring each response as its own sequence encodes the image and the prompt once per response; here one packed row
(engines.packing) holds the prompt and every response after it, with a block attention mask and positions restarting
after the prompt, so the image goes through the vision tower once and the prompt through the language model once
(`packed_sums`). Unlike reusing a KV cache, this is an ordinary forward, so it also works under gradient
checkpointing (which drops a passed-in cache). `plain_sums` computes the same numbers the plain way; tests pin their
agreement on every VLM family, and engines.fastpath checks it again on each run's first items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlaifv.engines.family import packed_inputs, plain_inputs
from rlaifv.engines.fastpath import trusted
from rlaifv.engines.packing import pack, pack_bounds
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


@dataclass
class ResponseGroup:
    """One prompt and k responses to it, as token ids ready to pack (logps.encode's conventions: the prompt with its
    image tokens expanded, each response's ids ending with the end-of-turn token)."""

    prefix_ids: list[int]  # image + prompt
    responses: list[list[int]]  # k non-empty responses
    vision: dict[str, torch.Tensor]  # what the processor says of the image, e.g. pixel_values (1, C, H, W)


def packed_sums(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int) -> torch.Tensor:
    """Summed log-probs of every response of every group, (R,) in group order, one packed row per group: prefix,
    then its responses, each seeing the prefix and itself only (engines.family.packed_inputs). Gradients flow.

    Only the positions that predict response tokens go through the LM head (`logits_to_keep`): the image and prompt
    positions are most of the row and their logits are never needed. Token t of a response is predicted by the
    logits one position earlier -- except each response's first token, which every response reads from the
    prefix's last position.
    """
    first = next(model.parameters())  # works through DDP / peft wrappers, which hide `.device` and `.dtype`
    device = first.device
    packs = [pack(g.prefix_ids, g.responses) for g in groups]
    rows, positions, targets, owner = [], [], [], []  # one entry per response token of the batch
    response = 0  # responses numbered over the batch, row by row
    for b, p in enumerate(packs):
        last_prompt = p.starts[0] - 1  # predicts the first token of every response
        for start, end in zip(p.starts, p.ends):
            n = end - start + 1
            rows += [b] * n
            positions += [last_prompt, *range(start, end)]
            targets += p.input_ids[start : end + 1]
            owner += [response] * n
            response += 1
    keep = sorted(set(positions))
    column = {pos: i for i, pos in enumerate(keep)}
    # ids (B, T), positions (B, T) or (3, B, T), the family's masks, each row's image
    batch = packed_inputs(model, packs, [g.vision for g in groups], pad_id, mask_dtype(first, device), device)
    # every index on the device before the forward is queued: none of the copies waits for it
    keep_t, owner_t = to_device(torch.tensor(keep), device), to_device(torch.tensor(owner), device)  # (K,), (N,)
    rows_t, targets_t = to_device(torch.tensor(rows), device), to_device(torch.tensor(targets), device)  # (N,)
    cols_t = to_device(torch.tensor([column[pos] for pos in positions]), device)  # (N,)
    logits = model(**batch, logits_to_keep=keep_t, use_cache=False).logits  # (B, K, V)
    logps = token_logps(logits, rows_t, cols_t, targets_t)  # (N,)
    return torch.zeros(response, device=device).index_add(0, owner_t, logps)  # (R,)


def plain_sums(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int,
               batch_size: int | None = None) -> torch.Tensor:
    """The same numbers the plain way, (R,) in group order: prefix + response as its own right-padded sequence,
    `batch_size` sequences per forward (all at once when None), the image encoded again for every response and
    the model deriving its own positions and masks (engines.family.plain_inputs). What `packed_sums` is tested
    against, and the exact path where a model's packed rows do not match it."""
    device = next(model.parameters()).device
    flat = [(g, r) for g, group in enumerate(groups) for r in range(len(group.responses))]
    size = batch_size or len(flat)
    sums = []
    for lo in range(0, len(flat), size):
        chunk = flat[lo : lo + size]
        seqs = [groups[g].prefix_ids + groups[g].responses[r] for g, r in chunk]
        batch = plain_inputs(model, seqs, [groups[g].vision for g, _ in chunk], pad_id, device)
        logits = model(**batch, use_cache=False).logits  # (b, T, V)
        for i, (g, _) in enumerate(chunk):
            n_prefix, end = len(groups[g].prefix_ids), len(seqs[i])
            target = batch["input_ids"][i, n_prefix:end]  # (L,)
            sums.append(_token_logps(logits[i, n_prefix - 1 : end - 1], target).sum())  # logits (L, V)
    return torch.stack(sums) if sums else torch.zeros(0, device=device)  # (R,)


def _as_groups(pairs: list[EncodedPair]) -> list[ResponseGroup]:
    return [ResponseGroup(p.prompt_ids, [p.chosen_ids, p.rejected_ids], p.vision) for p in pairs]


def packed_logps(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int) -> ResponseLogps:
    """Response log-probs of a batch of pairs, one packed row per pair: prefix = prompt, suffixes = chosen, rejected
    (`packed_sums`): the image through the vision tower once, the prompt through the language model once."""
    sums = packed_sums(model, _as_groups(pairs), pad_id)  # (2B,): chosen, rejected of pair 0, then pair 1, ...
    return ResponseLogps(sums[0::2], sums[1::2], *_lengths(pairs, sums.device))


def separate_logps(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int) -> ResponseLogps:
    """The same numbers the plain way: prompt + chosen and prompt + rejected as two right-padded sequences
    (`plain_sums`), twice the image and prompt compute of `packed_logps`."""
    sums = plain_sums(model, _as_groups(pairs), pad_id)  # (2B,)
    return ResponseLogps(sums[0::2], sums[1::2], *_lengths(pairs, sums.device))


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


def group_logps(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int, responses_per_pack: int = 16,
                packs_per_batch: int = 4) -> list[torch.Tensor]:
    """Summed log-probs of every response of every group (best-of-N's k answers per prompt), (k,) per group.

    A group's responses go behind its prefix in packed rows (`packed_sums`), `packs_per_batch` rows per forward. A
    row holds at most `responses_per_pack` responses and, as for the judge's questions, at most max(4 x prefix, 128)
    response tokens (engines.packing.pack_bounds): behind a LLaVA image (~600 tokens) that is all of 16 answers of
    ~150 tokens, one prefix per prompt; behind a short prefix a few answers per row, because there attention over
    one long row costs more than encoding the short prefix again (benchmarks/bon_speed.py). Equal to
    `separate_group_logps`, which serves instead on a model where the first groups' scores differ between the two
    (engines.fastpath).
    """
    probe = [ResponseGroup(g.prefix_ids, g.responses[:3], g.vision) for g in groups[:2] if g.responses]
    lengths = torch.tensor([len(r) for g in probe for r in g.responses])  # compare per-token log-probs
    first = next(model.parameters())
    if probe and not trusted(
        model, "bon.packed",
        lambda: torch.cat(_grouped_packed(model, probe, pad_id, responses_per_pack, packs_per_batch)) / lengths,
        lambda: plain_sums(model, probe, pad_id).cpu() / lengths, mask_dtype(first, first.device),
    ):
        return separate_group_logps(model, groups, pad_id)
    return _grouped_packed(model, groups, pad_id, responses_per_pack, packs_per_batch)


def _grouped_packed(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int, responses_per_pack: int,
                    packs_per_batch: int) -> list[torch.Tensor]:
    units = [(g, lo, hi) for g, group in enumerate(groups)
             for lo, hi in pack_bounds([len(r) for r in group.responses], len(group.prefix_ids), responses_per_pack)]
    out = [torch.zeros(len(group.responses)) for group in groups]
    for lo in range(0, len(units), packs_per_batch):
        batch = units[lo : lo + packs_per_batch]
        rows = [ResponseGroup(groups[g].prefix_ids, groups[g].responses[a:b], groups[g].vision) for g, a, b in batch]
        sums = packed_sums(model, rows, pad_id).float().cpu()  # (R,)
        for (g, a, b), s in zip(batch, sums.split([b - a for _, a, b in batch])):
            out[g][a:b] = s
    return out


def separate_group_logps(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int,
                         batch_size: int = 16) -> list[torch.Tensor]:
    """`group_logps` the plain way (`plain_sums`, `batch_size` sequences per forward): the reference it is tested
    against, and the baseline of benchmarks/bon_speed.py."""
    sums = plain_sums(model, groups, pad_id, batch_size).float().cpu()  # (R,)
    return list(sums.split([len(g.responses) for g in groups]))


def _lengths(pairs: list[EncodedPair], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = to_device(torch.tensor([len(p.chosen_ids) for p in pairs]), device)  # (B,)
    rejected = to_device(torch.tensor([len(p.rejected_ids) for p in pairs]), device)  # (B,)
    return chosen, rejected
