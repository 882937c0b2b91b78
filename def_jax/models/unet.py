"""The U-Net shared by the forecaster G_φ and the denoiser ε_θ (DEF_METHOD §3–§4).

DDPM-style layout (Ho et al. 2020; Dhariwal & Nichol 2021): an input 3×3 conv; per level ``num_res_blocks`` residual
blocks (self-attention after each at the configured levels), a stride-2 downsampling between levels; a middle of
ResBlock → attention → ResBlock; the decoder mirrors it with ``num_res_blocks + 1`` blocks per level, each fed the
concatenation of its input and a skip connection (passed through an attention gate, Oktay et al. 2018, when enabled),
and nearest-neighbour upsampling; GroupNorm → SiLU → a zero-initialized 3×3 output conv. An optional conditioning
vector (the diffusion-step embedding: sinusoidal → Linear → SiLU → Linear) enters every residual block.

Any grid size: the input is edge-padded up to a multiple of 2^(levels−1) and the output cropped back. Parameters are
float32; ``dtype`` is the compute dtype (bfloat16 for GPUs). ``remat`` recomputes each block in the backward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from def_jax.models.layers import (
    AttentionGate,
    Downsample,
    ResBlock,
    SelfAttention,
    Upsample,
    groups_for,
    timestep_embedding,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The U-Net hyperparameters of a config's ``forecaster`` or ``denoiser`` section (configs/presets.py)."""

    base_channels: int = 32
    channel_mults: tuple[float, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (2,)
    mid_attention: bool = True
    attention_gates: bool = True
    num_heads: int = 4
    norm_groups: int = 8
    dropout: float = 0.0
    time_embedding_dim: int = 128
    remat: bool = False
    dtype: str = "float32"
    attention: str = "auto"
    attention_chunk: int = 1024

    @classmethod
    def from_config(cls, section: Any) -> "UNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: section[k] for k in names}
        values["channel_mults"] = tuple(values["channel_mults"])
        values["attention_levels"] = tuple(values["attention_levels"])
        return cls(**values)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per level: round(base × mult), rounded to a multiple of the attention heads."""
        return tuple(max(self.num_heads, int(round(self.base_channels * m / self.num_heads)) * self.num_heads)
                     for m in self.channel_mults)

    @property
    def multiple(self) -> int:
        """Grid sizes are padded to a multiple of this (2^(levels − 1))."""
        return 2 ** (len(self.channel_mults) - 1)


class UNet(nnx.Module):
    """x [B, H, W, C_in] (any H, W), optional conditioning scalar t [B] → [B, H, W, C_out] (float32)."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, *, time_conditioned: bool,
                 rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        dtype = DTYPES[cfg.dtype]
        self.dtype = dtype
        widths = cfg.widths
        emb_dim = cfg.time_embedding_dim if time_conditioned else None
        if time_conditioned:
            self.time_mlp1 = nnx.Linear(cfg.time_embedding_dim, emb_dim, rngs=rngs)
            self.time_mlp2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        block = dict(emb_dim=emb_dim, groups=cfg.norm_groups, dropout=cfg.dropout, dtype=dtype, rngs=rngs)
        attn = dict(heads=cfg.num_heads, groups=cfg.norm_groups, dtype=dtype, rngs=rngs,
                    implementation=cfg.attention, chunk=cfg.attention_chunk)

        self.conv_in = nnx.Conv(in_channels, widths[0], (3, 3), dtype=dtype, rngs=rngs)
        down, skip_channels, ch = [], [widths[0]], widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                down.append(("res", ResBlock(ch, width, **block)))
                ch = width
                if level in cfg.attention_levels:
                    down.append(("attn", SelfAttention(ch, **attn)))
                skip_channels.append(ch)
                down.append(("skip", None))
            if level < len(widths) - 1:
                down.append(("down", Downsample(ch, dtype=dtype, rngs=rngs)))
                skip_channels.append(ch)
                down.append(("skip", None))
        self.down_kinds = tuple(k for k, _ in down)
        self.down = nnx.List([m for _, m in down if m is not None])
        self.mid1 = ResBlock(ch, ch, **block)
        self.mid_attn = SelfAttention(ch, **attn) if cfg.mid_attention else None
        self.mid2 = ResBlock(ch, ch, **block)
        up = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                c_skip = skip_channels.pop()
                if cfg.attention_gates:
                    up.append(("gate", AttentionGate(c_skip, ch, dtype=dtype, rngs=rngs)))
                up.append(("res", ResBlock(ch + c_skip, widths[level], **block)))
                ch = widths[level]
                if level in cfg.attention_levels:
                    up.append(("attn", SelfAttention(ch, **attn)))
            if level > 0:
                up.append(("up", Upsample(ch, dtype=dtype, rngs=rngs)))
        self.up_kinds = tuple(k for k, _ in up)
        self.up = nnx.List([m for _, m in up])
        self.norm_out = nnx.GroupNorm(ch, num_groups=groups_for(ch, cfg.norm_groups), dtype=jnp.float32, rngs=rngs)
        self.conv_out = nnx.Conv(ch, out_channels, (3, 3), dtype=dtype, kernel_init=nnx.initializers.zeros,
                                 rngs=rngs)

    def _embed(self, t: Optional[jax.Array], batch: int) -> Optional[jax.Array]:
        if t is None:
            return None
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))  # scalar or [B] → [B]
        emb = timestep_embedding(t, self.config.time_embedding_dim)  # [B, E]
        return self.time_mlp2(jax.nn.silu(self.time_mlp1(emb)))

    def _apply(self, kind: str, module, h, emb, skip, deterministic, rngs):
        """One block, rematerialized in the backward pass if configured."""
        def run(m, h, emb, skip, rngs):
            if kind == "res":
                return m(h, emb, deterministic=deterministic, rngs=rngs)
            if kind == "gate":
                return m(skip, h)
            return m(h)
        if self.config.remat and kind in ("res", "attn"):
            # jax.checkpoint of a pure function of the block's state (nnx.remat would update the block's variables
            # from inside its own trace, which fails when the network is called under vmap or scan, as the rollout
            # calls it)
            graphdef, state = nnx.split(module)
            return jax.checkpoint(lambda st, *a: run(nnx.merge(graphdef, st), *a))(state, h, emb, skip, rngs)
        return run(module, h, emb, skip, rngs)

    def __call__(self, x: jax.Array, t: Optional[jax.Array] = None, *, deterministic: bool = True,
                 rngs: Optional[jax.Array] = None) -> jax.Array:
        b, height, width, _ = x.shape
        m = self.config.multiple
        pad_h, pad_w = -height % m, -width % m
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge").astype(self.dtype)  # [B, H', W', C]
        emb = self._embed(t, b)
        counter = iter(range(10**6))

        def next_key():  # a distinct dropout key per block
            return None if rngs is None else jax.random.fold_in(rngs, next(counter))

        h = self.conv_in(x)
        skips = [h]
        mods = iter(self.down)
        for kind in self.down_kinds:
            if kind == "skip":
                skips.append(h)
            else:
                h = self._apply(kind, next(mods), h, emb, None, deterministic, next_key())
        h = self.mid1(h, emb, deterministic=deterministic, rngs=next_key())
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb, deterministic=deterministic, rngs=next_key())
        gated = None
        for kind, module in zip(self.up_kinds, self.up, strict=True):
            if kind == "gate":
                gated = self._apply(kind, module, h, emb, skips[-1], deterministic, None)
                continue
            if kind == "res":
                skip = skips.pop()
                h = jnp.concatenate([h, gated if gated is not None else skip], axis=-1)
                gated = None
            h = self._apply(kind, module, h, emb, None, deterministic, next_key())
        h = jax.nn.silu(self.norm_out(h)).astype(self.dtype)
        out = self.conv_out(h).astype(jnp.float32)  # [B, H', W', C_out]
        return out[:, :height, :width, :]

