"""The sigmoid DPO loss on policy and reference log-probs, and the metrics logged beside it (REFERENCE 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlaifv.config import DPOConfig
from rlaifv.logps.packed import ResponseLogps

METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected")


def sigmoid_dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * [(log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log
    ref(y_l))]) per pair, with the implicit rewards beta * (log pi(y) - log ref(y)) of both responses.

    All inputs (B,); returns losses (B,), chosen rewards (B,), rejected rewards (B,) (rewards detached).
    """
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    losses = -F.logsigmoid(beta * logits)  # (B,)
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def dpo_objective(policy: ResponseLogps, ref: ResponseLogps, cfg: DPOConfig) -> tuple[torch.Tensor, dict]:
    """Per-pair loss (B,) under the config's options, and per-pair metrics (each (B,), detached).

    `average_log_prob` divides policy and reference sums by the response lengths; `rpo_alpha` adds that weight times
    the chosen response's mean per-token NLL (per pair, so any split of a batch gives the same mean loss).
    """
    scale = (policy.chosen_tokens, policy.rejected_tokens) if cfg.average_log_prob else (1, 1)
    losses, chosen_r, rejected_r = sigmoid_dpo_loss(
        policy.chosen / scale[0], policy.rejected / scale[1], ref.chosen / scale[0], ref.rejected / scale[1], cfg.beta
    )
    metrics = {
        "rewards/chosen": chosen_r,
        "rewards/rejected": rejected_r,
        "rewards/margins": chosen_r - rejected_r,
        "rewards/accuracies": (chosen_r > rejected_r).float(),
        "logps/chosen": policy.chosen.detach(),
        "logps/rejected": policy.rejected.detach(),
    }
    if cfg.rpo_alpha:
        nll = -policy.chosen / policy.chosen_tokens  # (B,)
        losses = losses + cfg.rpo_alpha * nll
        metrics["nll_loss"] = nll.detach()
    metrics["loss"] = losses.detach()
    return losses, metrics
