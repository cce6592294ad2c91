"""The implicit reward of a DPO-trained policy, r(y) = beta * (log pi(y | x) - log pi_ref(y | x)) (REFERENCE 6).

DPO trains the policy so that this difference ranks the chosen response above the rejected one; how often it does so
on pairs it never trained on says how well the policy learned the labeler's preferences, without any ground truth.
`rlaifv iterate --select-on reward` picks checkpoints by that accuracy; best-of-N ranks a policy's own samples with
the length-normalized form (divide by the response's tokens).

Best-of-N scores k responses per prompt with the same packed computation (logps.packed.group_logps), and infer.bon
turns the sums into rewards.

The policy's log-probs come from the trainer's shared-prefix computation (logps.packed: one packed row per pair, the
image and prompt encoded once), the reference's from the stored reference pass, so the numbers are exactly the
ones DPO's loss sees.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlaifv.config import DPOConfig
from rlaifv.logps.encode import PairEncoder
from rlaifv.logps.packed import ResponseLogps, response_logps
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
