"""rlaifv: align vision-language models against hallucination with feedback from open models (RLAIF-V)."""

__version__ = "0.1.0"
