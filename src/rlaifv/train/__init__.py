"""DPO for any Hugging Face VLM: preference data in, a trained model out (`rlaifv train`).

    dpo.py           the trainer on accelerate: the run, checkpoints, resume, metrics, export
    loss.py          the sigmoid DPO loss and its logged metrics
    schedule.py      which pairs each step sees, for every process and accumulation step
    policy_model.py  the policy as trained: dropout off, frozen vision tower, LoRA, checkpointing, its optimizer
    lora.py          LoRA layers that keep no copies of their inputs for the backward pass (dropout replayed by seed)

What the trainer shares with the implicit reward sits a layer below: pairs from a pair store, TRL's VLM format or the
RLAIF-V-Dataset columns (`rlaifv.preferences`), their token ids, packed log-probs and the reference model's stored
pass (`rlaifv.logps`).
"""

from rlaifv.logps.reference import compute_reference_logps
from rlaifv.train.dpo import train_dpo

__all__ = ["compute_reference_logps", "train_dpo"]
