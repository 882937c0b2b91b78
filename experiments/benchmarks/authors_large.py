"""The GPU-user-representative size of the side-by-side with the authors' stack (authors_vs_defjax.sh): the demo
preset with the denoiser widened to 64/128/256 channels (4 heads of 64 at the attended level, 1024 tokens on a
128×128 grid). Use: CONFIG=experiments/benchmarks/authors_large.py:large GRID=128x128 MEMBERS=2."""

from configs.presets import get_config as preset


def get_config(variant=None):
    cfg = preset("demo")
    cfg.denoiser.base_channels = 64
    cfg.denoiser.time_embedding_dim = 256
    return cfg
