"""DPO for any Hugging Face VLM: preference data in, a trained model out (`rlaifv train`).

    data.py       pairs from a pair store, TRL's VLM format or the RLAIF-V-Dataset columns; bad rows quarantined
    encode.py     chat template and token ids of one pair: prompt (image tokens expanded), chosen, rejected
    logps.py      summed response log-probs from one packed row per pair (and the plain two-sequence version)
    reference.py  the reference model's log-probs, computed once into a resumable store beside the pairs
    lora.py       LoRA layers that keep no copies of their inputs for the backward pass (dropout replayed by seed)
    dpo.py        the trainer on accelerate: sigmoid DPO, checkpoints, resume, LoRA, metrics, export
"""

from rlaifv.train.dpo import train_dpo
from rlaifv.train.reference import compute_reference_logps

__all__ = ["compute_reference_logps", "train_dpo"]
