"""Inference-time use of an aligned policy: its implicit reward (reward.py) and best-of-N scoring built on it
(bon.py); `rlaifv bon` end to end is rlaifv.pipelines.best_of_n."""
