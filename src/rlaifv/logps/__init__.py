"""Log-probabilities of responses under a VLM, computed the one way DPO's loss sees them.

    encode.py     chat template and token ids of one pair: prompt (image tokens expanded), chosen, rejected
    packed.py     summed response log-probs from one packed row per pair (and the plain two-sequence version)
    reference.py  the reference model's log-probs, computed once into a resumable store beside the pairs

DPO (train) and the implicit reward (infer: reward accuracy, best-of-N) both need these numbers, and must get the
same ones; as stages they may not import each other, so the shared computation sits here, one layer below them.
"""
