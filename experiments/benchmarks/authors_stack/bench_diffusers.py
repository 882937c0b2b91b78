#!/usr/bin/env python3
"""The DEF authors' stack, timed: PyTorch + diffusers ``UNet2DModel`` + ``DPMSolverMultistepScheduler``.

Standalone (no def_jax import): run it with the separate venv of ``requirements.txt`` beside this file, e.g.

    .venv-authors/bin/python experiments/benchmarks/authors_stack/bench_diffusers.py \
        --ny 64 --nx 64 --state-channels 73 --condition-channels 73 --base-channels 32 --channel-mults 1,2,4 \
        --num-res-blocks 2 --attention-levels 2 --members 4 --steps 10 --guidance-scale 0.5 --repeats 3 \
        --threads 2 --json bench_results/diffusers.json

One reverse diffusion of B ensemble members with classifier-free guidance, as the DEF authors' sampling loop does it:
the condition and the null condition (zeros) are stacked along the batch, [c; ∅], the noisy state is duplicated,
[x; x], the network input is the channel concatenation (condition first, then x), and each solver step makes ONE
network call over 2B samples; then ε̂ = ε(∅) + λ (ε(c) − ε(∅)) goes to ``scheduler.step``. Random weights, eval mode,
``torch.inference_mode``, float32.

Reported (printed and written as JSON): wall seconds per reverse diffusion (median of R timed runs after one warm-up),
members × steps per second, network calls per second and sample-forwards per second (one call = 2B sample-forwards),
the FLOPs of one batch-1 forward counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmul-class ops only:
convolutions, linear layers and attention; not GroupNorm, SiLU, softmax or additions) and the GFLOP/s achieved with
them, one batched call timed on its own (to give the scheduler's own share), parameter count, threads, versions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip() != "")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip() != "")


def _plain(config) -> dict:
    """A scheduler config as strict-JSON values (non-finite floats as strings, private keys dropped)."""
    out = {}
    for k, v in dict(config).items():
        if k.startswith("_"):
            continue
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        if isinstance(v, (int, float, str, bool, type(None), list)):
            out[k] = v
    return out


def _timed(fn, n: int):
    """Call ``fn`` n times; the wall seconds of each call and the last result."""
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ny", type=int, default=64, help="grid height (padded up to a multiple of 2^(levels-1))")
    p.add_argument("--nx", type=int, default=64, help="grid width (padded likewise)")
    p.add_argument("--state-channels", type=int, default=73, help="C: channels of the diffused state (= out channels)")
    p.add_argument("--condition-channels", type=int, default=73, help="Cc: condition channels (DEF: Cc = C)")
    p.add_argument("--base-channels", type=int, default=32, help="W: width of the first level")
    p.add_argument("--channel-mults", type=_floats, default=(1, 2, 4), help="comma list, width of level l = W*m_l")
    p.add_argument("--num-res-blocks", type=int, default=2, help="N: residual blocks per down level (up: N+1)")
    p.add_argument("--attention-levels", type=_ints, default=(2,),
                   help="comma list of levels (0 = full resolution) with self-attention; '' for none")
    p.add_argument("--heads", type=int, default=4, help="attention heads (sets attention_head_dim)")
    p.add_argument("--norm-groups", type=int, default=8, help="GroupNorm groups (norm_num_groups)")
    p.add_argument("--members", type=int, default=4, help="B: ensemble members in one reverse diffusion")
    p.add_argument("--steps", type=int, default=10, help="S: solver steps (= network calls)")
    p.add_argument("--guidance-scale", type=float, default=0.5, help="λ of classifier-free guidance")
    p.add_argument("--repeats", type=int, default=3, help="R: timed runs after one warm-up (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="instead of sampling: time this many AdamW updates of the U-Net on --members samples "
                        "(in channels Cc + C, out C; MSE to a fixed random target; the median is reported)")
    p.add_argument("--no-time", action="store_true",
                   help="--train-steps: the network has no step input (def-jax's G_φ): timestep 0 is passed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None, help="write the result here")
    args = p.parse_args(argv)
    for name in ("ny", "nx", "state_channels", "condition_channels", "base_channels", "num_res_blocks", "heads",
                 "norm_groups", "members", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    levels = len(args.channel_mults)
    if levels < 1:
        p.error("--channel-mults must name at least one level")
    bad = [lv for lv in args.attention_levels if not 0 <= lv < levels]
    if bad:
        p.error(f"--attention-levels {bad} outside 0..{levels - 1}")
    return args


def level_widths(base: int, mults, heads: int) -> list[int]:
    """Channels per level, rounded to a multiple of the heads (the same rule as def-jax's UNetConfig.widths)."""
    return [max(heads, int(round(base * m / heads)) * heads) for m in mults]


def build_unet(args, in_channels: int, out_channels: int, sample_size):
    from diffusers import UNet2DModel

    widths = level_widths(args.base_channels, args.channel_mults, args.heads)
    levels = len(widths)
    att = set(args.attention_levels)
    down = ["AttnDownBlock2D" if lv in att else "DownBlock2D" for lv in range(levels)]
    # up_blocks[i] works at level levels-1-i (diffusers builds them from the reversed widths).
    up = ["AttnUpBlock2D" if (levels - 1 - i) in att else "UpBlock2D" for i in range(levels)]
    # UNet2DModel takes ONE attention_head_dim for every attention block (down, mid, up): choose it to give `heads`
    # heads at the first attention level (the mid block if there is none); other widths then get width/head_dim heads.
    ref_width = widths[min(att)] if att else widths[-1]
    head_dim = max(1, ref_width // args.heads)
    model = UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(widths),
        layers_per_block=args.num_res_blocks,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=args.norm_groups,
        attention_head_dim=head_dim,
    )
    heads = {f"level{lv}": widths[lv] // head_dim for lv in sorted(att)}
    heads["mid"] = widths[-1] // head_dim
    return model, dict(widths=widths, down_block_types=down, up_block_types=up, attention_head_dim=head_dim,
                       heads=heads)


def count_flops(model, x1, t1) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward (FlopCounterMode: 2 per multiply-add of conv/mm/bmm/addmm/attention), total and by op."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(x1, t1, return_dict=False)
    # Keys of get_flop_counts are op packets (str: "aten.convolution"); "Global" sums over modules.
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def main(argv=None) -> int:
    args = parse_args(argv)
    import diffusers
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DPMSolverMultistepScheduler

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.train_steps > 0:
        return train_main(args, argv)

    B, S, C, Cc = args.members, args.steps, args.state_channels, args.condition_channels
    multiple = 2 ** (len(args.channel_mults) - 1)
    ny_p, nx_p = math.ceil(args.ny / multiple) * multiple, math.ceil(args.nx / multiple) * multiple
    model, arch = build_unet(args, Cc + C, C, (ny_p, nx_p))
    model = model.eval()  # parameters are float32 (diffusers' default)
    n_params = sum(p.numel() for p in model.parameters())

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", algorithm_type="dpmsolver++", solver_order=2,
        lower_order_final=True, prediction_type="epsilon",
    )
    scheduler.set_timesteps(S)
    if len(scheduler.timesteps) != S:
        raise SystemExit(f"scheduler gave {len(scheduler.timesteps)} timesteps for {S} steps")

    lam = args.guidance_scale
    gen = torch.Generator().manual_seed(args.seed + 1)
    condition = torch.randn(B, Cc, args.ny, args.nx, generator=gen)  # DEF: c = the state being perturbed
    batch_cond = torch.cat([condition, torch.zeros_like(condition)])  # [c; ∅], [2B, Cc, ny, nx]
    x_T = torch.randn(B, C, args.ny, args.nx, generator=gen) * scheduler.init_noise_sigma
    pad = (0, nx_p - args.nx, 0, ny_p - args.ny)  # edge padding to the U-Net's multiple, cropped after (as def-jax)

    def eps_batched(x2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One network call over the 2B samples [c; ∅] ⊕ [x; x] → ε [2B, C, ny, nx]."""
        inp = torch.cat([batch_cond, x2], dim=1)  # condition first, then the noisy state
        if any(pad):
            inp = F.pad(inp, pad, mode="replicate")
        out = model(inp, t.expand(x2.shape[0]), return_dict=False)[0]
        return out[:, :, : args.ny, : args.nx]

    def reverse_diffusion() -> torch.Tensor:
        scheduler.set_timesteps(S)  # resets the multistep history and the step index
        x = x_T.clone()
        for t in scheduler.timesteps:
            eps = eps_batched(torch.cat([x, x]), t.reshape(1))
            eps_c, eps_u = eps.chunk(2)
            eps_hat = eps_u + lam * (eps_c - eps_u)
            x = scheduler.step(eps_hat, t, x).prev_sample
        return x

    load_before = os.getloadavg()
    with torch.inference_mode():
        flops_1, flops_by_op = count_flops(model, torch.randn(1, Cc + C, ny_p, nx_p), torch.tensor([500]))

        t0 = time.perf_counter()
        x0 = reverse_diffusion()  # warm-up
        warmup_s = time.perf_counter() - t0
        times, x0 = _timed(reverse_diffusion, args.repeats)
        run_s = statistics.median(times)
        finite = bool(torch.isfinite(x0).all())

        # One batched call (2B samples) on its own, for the scheduler's and the guidance's share of the run.
        x2 = torch.cat([x_T, x_T])
        t_mid = scheduler.timesteps[len(scheduler.timesteps) // 2].reshape(1)
        eps_batched(x2, t_mid)
        ftimes, _ = _timed(lambda: eps_batched(x2, t_mid), max(args.repeats, 3))
        forward_s = statistics.median(ftimes)

    calls = S  # DPM-Solver++ 2M: one network call per step
    sample_forwards = 2 * B * calls
    result = {
        "stack": "pytorch+diffusers",
        "model": "diffusers.UNet2DModel",
        "scheduler": "DPMSolverMultistepScheduler",
        "scheduler_config": _plain(scheduler.config),
        "timesteps": [int(t) for t in scheduler.timesteps],
        "grid": [args.ny, args.nx],
        "grid_padded": [ny_p, nx_p],
        "state_channels": C,
        "condition_channels": Cc,
        "in_channels": Cc + C,
        "base_channels": args.base_channels,
        "channel_mults": list(args.channel_mults),
        "num_res_blocks": args.num_res_blocks,
        "attention_levels": list(args.attention_levels),
        "norm_groups": args.norm_groups,
        "architecture": arch,
        "parameters": n_params,
        "members": B,
        "steps": S,
        "guidance_scale": lam,
        "network_calls": calls,
        "batch_per_call": 2 * B,
        "repeats": args.repeats,
        "run_times_s": times,
        "warmup_s": warmup_s,
        "run_s": run_s,
        "ms_per_step": 1e3 * run_s / S,
        "member_steps_per_s": B * S / run_s,
        "network_calls_per_s": calls / run_s,
        "sample_forwards_per_s": sample_forwards / run_s,
        "forward_ms": 1e3 * forward_s,
        "solver_overhead_pct": 100.0 * (run_s - calls * forward_s) / run_s,
        "flops_per_sample_forward": flops_1,
        "gflop_per_sample_forward": flops_1 / 1e9,
        "flops_by_op": flops_by_op,
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (conv/mm/bmm/addmm/sdpa only, 2 FLOP per MAC)",
        "gflops_per_s": flops_1 * sample_forwards / run_s / 1e9,
        "output_finite": finite,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            # 1-min load average before and after: on a shared machine, a load above the thread count means the
            # timings competed with other jobs.
            "loadavg_1min": [load_before[0], os.getloadavg()[0]],
            "torch_config": {"mkldnn": bool(torch.backends.mkldnn.is_available()),
                             "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()},
        },
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
    }

    rows = [
        ("stack", f"torch {torch.__version__}, diffusers {diffusers.__version__}, {result['threads']} thread(s)"),
        ("network", f"UNet2DModel widths {arch['widths']}, {args.num_res_blocks} res blocks, attention "
                    f"{list(args.attention_levels)} ({arch['heads']} heads), {n_params / 1e6:.2f} M params"),
        ("state", f"{B} members × {C}×{args.ny}×{args.nx} (+{Cc} condition ch), batch {2 * B} per call"),
        ("solver", f"DPM-Solver++ 2M, {S} steps, λ = {lam}"),
        ("warm-up", f"{warmup_s:.2f} s"),
        ("run", f"{run_s:.3f} s (median of {args.repeats}: {', '.join(f'{t:.3f}' for t in times)})"),
        ("per solver step", f"{1e3 * run_s / S:.1f} ms"),
        ("members × steps/s", f"{B * S / run_s:.2f}"),
        ("network calls/s", f"{calls / run_s:.2f}"),
        ("sample forwards/s", f"{sample_forwards / run_s:.2f}"),
        ("forward alone", f"{1e3 * forward_s:.1f} ms per {2 * B}-sample call"),
        ("GFLOP/forward", f"{flops_1 / 1e9:.3f} per sample (FlopCounterMode)"),
        ("achieved", f"{result['gflops_per_s']:.1f} GFLOP/s"),
        ("solver overhead", f"{result['solver_overhead_pct']:.1f} % of run time"),
        ("load average", f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)"),
    ]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if finite else 1


def train_main(args, argv) -> int:
    """``--train-steps N``: N AdamW updates (torch.optim.AdamW, lr 1e-4, weight decay 0.01) of the U-Net on one batch
    of B = --members random samples, loss = mean((UNet(x, t) − target)²); the median update time after one warm-up."""
    import diffusers
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    B, C, Cc = args.members, args.state_channels, args.condition_channels
    multiple = 2 ** (len(args.channel_mults) - 1)
    ny_p, nx_p = math.ceil(args.ny / multiple) * multiple, math.ceil(args.nx / multiple) * multiple
    model, arch = build_unet(args, Cc + C, C, (ny_p, nx_p))
    model = model.train()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed + 1)
    inputs = torch.randn(B, Cc + C, args.ny, args.nx, generator=gen)
    target = torch.randn(B, C, args.ny, args.nx, generator=gen)
    t = torch.zeros(B, dtype=torch.long) if args.no_time else torch.randint(1, 1001, (B,), generator=gen)
    pad = (0, nx_p - args.nx, 0, ny_p - args.ny)

    def update() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        x = F.pad(inputs, pad, mode="replicate") if any(pad) else inputs
        pred = model(x, t, return_dict=False)[0][:, :, : args.ny, : args.nx]
        loss = torch.mean((pred - target) ** 2)
        loss.backward()
        optimizer.step()
        return loss

    counter = FlopCounterMode(display=False)
    with counter:  # forward + backward (the optimizer's elementwise work is not counted)
        update()
    flops = int(counter.get_total_flops())
    load_before = os.getloadavg()
    times, loss = _timed(update, args.train_steps)
    update_s = statistics.median(times)
    loss = float(loss.detach())
    result = {
        "stack": "pytorch+diffusers", "model": "diffusers.UNet2DModel", "mode": "train",
        "optimizer": "torch.optim.AdamW(lr=1e-4, weight_decay=0.01)", "grid": [args.ny, args.nx],
        "in_channels": Cc + C, "out_channels": C, "time_input": not args.no_time, "architecture": arch,
        "parameters": n_params, "batch": B, "update_times_s": times, "update_s": update_s,
        "updates_per_s": 1.0 / update_s, "samples_per_s": B / update_s, "flops_per_update": flops,
        "flop_counter": "FlopCounterMode over forward + backward (conv/mm/bmm/addmm/sdpa only)",
        "gflops_per_s": flops / update_s / 1e9, "loss": loss, "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "machine": {"cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                    "loadavg_1min": [load_before[0], os.getloadavg()[0]]},
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
    }
    print(f"UNet2DModel widths {arch['widths']}, {n_params / 1e6:.2f} M params, batch {B} × {Cc + C}×{args.ny}×"
          f"{args.nx} → {C}: AdamW update {1e3 * update_s:.1f} ms (median of {args.train_steps}), "
          f"{B / update_s:.2f} samples/s, {flops / 1e9:.3f} GFLOP → {result['gflops_per_s']:.1f} GFLOP/s, "
          f"{torch.get_num_threads()} thread(s), loss {loss:.4f}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if math.isfinite(loss) else 1


if __name__ == "__main__":
    sys.exit(main())
