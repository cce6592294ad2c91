"""Inference-time use of an aligned policy: its implicit reward (reward.py); best-of-N builds on it."""
