"""Model compute behind one small interface: local Hugging Face models today."""
