"""The implicit reward of a DPO-trained policy, r(y) = beta * (log pi(y | x) - log pi_ref(y | x)) (REFERENCE 6).

DPO trains the policy so that this difference ranks the chosen response above the rejected one; how often it does so
on pairs it never trained on says how well the policy learned the labeler's preferences, without any ground truth.
`rlaifv iterate --select-on reward` picks checkpoints by that accuracy; best-of-N ranks a policy's own samples with
the length-normalized form (divide by the response's tokens).

Best-of-N scores k responses per prompt: `group_logps` is the trainer's packed computation with k responses behind
one prefix instead of two (`separate_group_logps` is the plain one it is tested against), and infer.bon turns the
sums into rewards.

The policy's log-probs come from the trainer's shared-prefix computation (logps.packed: one packed row per pair, the
image and prompt encoded once), the reference's from the stored reference pass, so the numbers are exactly the
ones DPO's loss sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlaifv.config import DPOConfig
from rlaifv.engines.family import packed_inputs, plain_inputs
from rlaifv.engines.fastpath import trusted
from rlaifv.engines.packing import Pack, pack, pack_bounds
from rlaifv.logps.encode import PairEncoder
from rlaifv.logps.packed import ResponseLogps, mask_dtype, response_logps, token_logps
from rlaifv.logps.reference import ReferenceTable, encode_batch, length_limit, load_model
from rlaifv.preferences import PreferenceExample
from rlaifv.progress import progress


def implicit_reward(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float,
                    n_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """beta * (log pi - log pi_ref) per response; with `n_tokens`, divided by the response lengths first (the
    per-token form, which does not favour short responses). All (B,) -> (B,)."""
    diff = policy_logp - ref_logp  # (B,)
    return beta * (diff / n_tokens if n_tokens is not None else diff)


def pair_rewards(policy: ResponseLogps, ref: ResponseLogps, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards, rejected rewards), each (B,), normalized by length iff the policy trained with
    `average_log_prob`, so the reward is the one its DPO loss used."""
    norm = cfg.average_log_prob
    chosen = implicit_reward(policy.chosen, ref.chosen, cfg.beta, policy.chosen_tokens if norm else None)
    rejected = implicit_reward(policy.rejected, ref.rejected, cfg.beta, policy.rejected_tokens if norm else None)
    return chosen, rejected


def reward_accuracy(policy: str | Path, examples: list[PreferenceExample], reference: ReferenceTable,
                    cfg: DPOConfig, device: torch.device | str = "cpu") -> dict[str, float | int]:
    """How often the policy's implicit reward prefers the chosen response, over the examples that have reference
    log-probs (quarantined ones are skipped). A tie counts as wrong, as in DPO's `rewards/accuracies`.

    Returns accuracy, mean reward margin (chosen - rejected) and n, the pairs scored.
    """
    examples = [e for e in examples if e.key in reference.logps]
    if not examples:
        raise ValueError("no held-out pair with reference log-probs to score")
    model, processor = load_model(policy, cfg, device)
    model.eval()
    encoder = PairEncoder(processor, length_limit(model.config, cfg))
    size = cfg.precompute_ref_batch_size or cfg.per_device_train_batch_size
    correct, margins = 0, 0.0

    def bad(example: PreferenceExample, reason: str) -> None:  # it passed the reference pass with the same tokenizer
        raise ValueError(f"held-out pair {example.key} can no longer be encoded ({reason})")

    with progress("reward accuracy", len(examples)) as bar, torch.no_grad():
        for lo in range(0, len(examples), size):
            encoded = encode_batch(encoder, examples[lo : lo + size], bad)
            logps = response_logps(model, encoded, processor.tokenizer.pad_token_id)
            ref = reference.batch([p.key for p in encoded], logps.chosen.device)
            chosen, rejected = pair_rewards(logps, ref, cfg)  # (B,), (B,)
            correct += int((chosen > rejected).sum())
            margins += float((chosen - rejected).sum())
            bar.advance(len(encoded))
    return {"accuracy": correct / len(examples), "margin": margins / len(examples), "n": len(examples)}


# -- k responses per prompt (best-of-N) ------------------------------------------------------------------------------


@dataclass
class ResponseGroup:
    """One prompt and k responses to it, as token ids ready to pack (logps.encode's conventions: the prompt with its
    image tokens expanded, each response's ids ending with the end-of-turn token)."""

    prefix_ids: list[int]  # image + prompt
    responses: list[list[int]]  # k non-empty responses
    vision: dict[str, torch.Tensor]  # processor outputs besides the ids, e.g. pixel_values (1, C, H, W)


def group_logps(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int, responses_per_pack: int = 16,
                packs_per_batch: int = 4) -> list[torch.Tensor]:
    """Summed log-probs of every response of every group, (k,) per group, the prefix encoded once per packed row.

    logps.packed.packed_logps with k responses instead of two: a group's responses go behind its prefix in packed
    rows (block attention mask, positions restarting after the prefix, so each response sees exactly prefix +
    itself), `packs_per_batch` rows per forward, and only the positions that predict a response token reach the LM
    head. A row holds at most `responses_per_pack` responses and, as for the judge's questions, at most
    max(4 x prefix, 128) response tokens (engines.packing.pack_bounds): behind a LLaVA image (~600 tokens) that is
    all of 16 answers of ~150 tokens, one prefix per prompt; behind the world's 22-token prefix a few answers per
    row, because there attention over one long row costs more than encoding the short prefix again
    (benchmarks/bon_speed.py). Equal to `separate_group_logps` (tests pin it to 1e-4 in fp32), which serves
    instead on a model where the first groups' scores differ between the two (engines.fastpath).
    """
    probe = [ResponseGroup(g.prefix_ids, g.responses[:3], g.vision) for g in groups[:2] if g.responses]
    lengths = torch.tensor([len(r) for g in probe for r in g.responses])  # compare per-token log-probs
    first = next(model.parameters())
    if probe and not trusted(
        model, "bon.packed",
        lambda: torch.cat(_packed_logps(model, probe, pad_id, responses_per_pack, packs_per_batch)) / lengths,
        lambda: torch.cat(separate_group_logps(model, probe, pad_id)) / lengths, mask_dtype(first, first.device),
    ):
        return separate_group_logps(model, groups, pad_id)
    return _packed_logps(model, groups, pad_id, responses_per_pack, packs_per_batch)


def _packed_logps(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int, responses_per_pack: int,
                  packs_per_batch: int) -> list[torch.Tensor]:
    units = [(g, lo, hi) for g, group in enumerate(groups)
             for lo, hi in pack_bounds([len(r) for r in group.responses], len(group.prefix_ids), responses_per_pack)]
    out = [torch.zeros(len(group.responses)) for group in groups]
    for lo in range(0, len(units), packs_per_batch):
        batch = units[lo : lo + packs_per_batch]
        sums = _packed_sums(model, [groups[g] for g, _, _ in batch],
                            [pack(groups[g].prefix_ids, groups[g].responses[a:b]) for g, a, b in batch], pad_id)
        for (g, a, b), s in zip(batch, sums):
            out[g][a:b] = s.float().cpu()
    return out


def _packed_sums(model: torch.nn.Module, groups: list[ResponseGroup], packs: list[Pack],
                 pad_id: int) -> list[torch.Tensor]:
    """(k_b,) summed response log-probs of each packed row b, from one forward (groups[b] holds row b's image)."""
    first = next(model.parameters())
    device = first.device
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
    logits = model(**batch, logits_to_keep=torch.tensor(keep, device=device), use_cache=False).logits  # (B, K, V)
    logps = token_logps(logits, torch.tensor(rows, device=device),
                        torch.tensor([column[pos] for pos in positions], device=device),
                        torch.tensor(targets, device=device))  # (N,)
    counts = [len(p.starts) for p in packs]
    sums = torch.zeros(sum(counts), device=device).index_add(0, torch.tensor(owner, device=device), logps)  # (R,)
    return list(sums.split(counts))


def separate_group_logps(model: torch.nn.Module, groups: list[ResponseGroup], pad_id: int,
                         batch_size: int = 16) -> list[torch.Tensor]:
    """The same numbers the plain way: prefix + response as its own right-padded sequence, `batch_size` sequences
    per forward, the image encoded again for every response and logits at every position. The reference
    `group_logps` is tested against, and the baseline of benchmarks/bon_speed.py."""
    device = next(model.parameters()).device
    flat = [(g, r) for g, group in enumerate(groups) for r in range(len(group.responses))]
    out = [torch.zeros(len(group.responses)) for group in groups]
    for lo in range(0, len(flat), batch_size):
        chunk = flat[lo : lo + batch_size]
        seqs = [groups[g].prefix_ids + groups[g].responses[r] for g, r in chunk]
        batch = plain_inputs(model, seqs, [groups[g].vision for g, _ in chunk], pad_id, device)
        logits = model(**batch, use_cache=False).logits  # (B, T, V)
        for i, (g, r) in enumerate(chunk):
            n_prefix, end = len(groups[g].prefix_ids), len(seqs[i])
            target = batch["input_ids"][i, n_prefix:end]  # (L,)
            out[g][r] = logits[i, n_prefix - 1 : end - 1].float().log_softmax(-1).gather(-1, target[:, None]).sum()
    return out
