"""ssmzoo: state-space (Mamba-family) models for vision and audio, registered in timm."""
__version__ = "0.1.0"
