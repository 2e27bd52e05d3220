"""gdsd_lightning: one Lightning harness for RL post-training of diffusion language models."""

__version__ = "0.1.0"
