"""The model commands of ``def-jax``: train-forecaster, train-diffusion, info, check-denoiser."""

from __future__ import annotations

from pathlib import Path

from absl import flags

from def_jax.cli_base import Invocation, output_path, parse_grid, start_processes
from def_jax.errors import UserError


def _train(kind: str, inv: Invocation) -> int:
    """Train G_φ (``kind="forecaster"``) or ε_θ (``"diffusion"``). The train commands have no flags of their own:
    everything is in the config (``--config.training.forecaster.max_steps=...``)."""
    start_processes(inv.config)  # before any JAX work
    from def_jax.training.loop import train

    summary = train(kind, inv.config, inv.workdir)
    print(f"{kind}: step {summary['step']} of {summary['total_steps']}"
          + (f", best validation loss {summary['best_val_loss']:.4g}" if summary.get("best_val_loss") else ""))
    return 0


def train_forecaster_run(inv: Invocation) -> int:
    return _train("forecaster", inv)


def train_diffusion_run(inv: Invocation) -> int:
    return _train("diffusion", inv)


def info_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("model", "both", ["forecaster", "denoiser", "both"], "Which network to report.",
                      flag_values=fv)
    flags.DEFINE_string("grid", None, "HEIGHTxWIDTH (default: data.crop_shape if set, else data.grid_shape).",
                        flag_values=fv)
    flags.DEFINE_bool("memory", False, "Also estimate the memory of one training step (nothing is executed).",
                      flag_values=fv)
    flags.DEFINE_bool("compiled", True, "With --memory: also compile the step for XLA's memory analysis on this "
                      "backend (minutes for a full-domain model; --nocompiled gives the estimate alone).",
                      flag_values=fv)
    flags.DEFINE_integer("batch", None, "Micro-batch for --memory (default: training.<model>.batch_size).",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_string("out", None, "Also write the report as JSON here.", flag_values=fv)


def info_run(inv: Invocation) -> int:
    from def_jax.bench import write_json
    from def_jax.training.info import format_report, model_report

    cfg, fv = inv.config, inv.flags
    crop = tuple(cfg.data.crop_shape)
    grid = parse_grid(fv.grid or None, crop if min(crop) > 0 else tuple(cfg.data.grid_shape), example="256x256")
    kinds = ["forecaster", "diffusion"] if fv.model == "both" else [
        "forecaster" if fv.model == "forecaster" else "diffusion"]
    if not fv.compiled and not fv.memory:
        raise UserError("--nocompiled: it selects what --memory reports; add --memory")
    reports = [model_report(cfg, k, grid, memory=fv.memory, batch=fv.batch, compiled=fv.compiled) for k in kinds]
    for r in reports:
        print(format_report(r))
    if fv.out:
        write_json({"preset": cfg.preset, "reports": reports}, Path(fv.out))
    return 0


def check_denoiser_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("scales", ["1", "0.7", "0.5", "0.3"], "Guidance scales λ of the walk check.", flag_values=fv)
    flags.DEFINE_integer("states", 8, "Validation states (every --every hours from data.val_period).",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("members", 4, "Members of the walk from each state.", flag_values=fv, lower_bound=2)
    flags.DEFINE_float("every", 12.0, "Hours between the validation states.", flag_values=fv, lower_bound=1.0)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/check_denoiser).", flag_values=fv)


def check_denoiser_run(inv: Invocation) -> int:
    from def_jax.evaluation.denoiser_check import check_denoiser

    fv = inv.flags
    try:
        scales = [float(s) for s in fv.scales]
    except ValueError:
        raise UserError(f"--scales: expected numbers such as 1,0.5; got {','.join(fv.scales)}") from None
    if any(not s >= 0 for s in scales):
        raise UserError(f"--scales must be >= 0; got {','.join(fv.scales)}")
    out = output_path(inv, "check_denoiser")
    check_denoiser(inv.config, inv.workdir, out, scales=scales, states=fv.states, members=fv.members,
                   every_hours=fv.every)
    return 0
