"""Evaluation: exact world metrics and reports."""
