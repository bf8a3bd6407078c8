"""qexp: reproduce transformer-quantization papers from Hydra configs."""
__version__ = "0.1.0"
