"""The data engine of RLAIF-V: deconfounded sampling, claims, judging, pairs (moves 1-2)."""
