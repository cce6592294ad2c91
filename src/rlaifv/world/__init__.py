"""The embedded default: a synthetic visual world with exact ground truth and tiny VLMs trained on it."""
