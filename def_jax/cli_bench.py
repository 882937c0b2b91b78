"""``def-jax bench TARGET``: the benchmarks of ``def_jax.bench`` (sampler, train, loader, prepare), their flags and
the JSON result each writes (``--out``, default ``WORKDIR/bench_TARGET.json``)."""

from __future__ import annotations

from absl import flags

from def_jax import cli_data
from def_jax.cli_base import Invocation, output_path, parse_grid, start_processes
from def_jax.errors import UserError


def bench_define(fv: flags.FlagValues) -> None:
    # sampler
    flags.DEFINE_integer("batch", None, "sampler: ensemble members in one solve (default: config.ensemble.members); "
                         "train: batch size per micro-batch (default: config.training.MODEL.batch_size); "
                         "loader: batch size (default: config.training.forecaster.batch_size).", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_string("grid", None, "sampler: HEIGHTxWIDTH of the state (default: config.data.grid_shape).",
                        flag_values=fv)
    flags.DEFINE_integer("channels", None, "sampler: state channels (default: the catalogue's state channels).",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_enum("eps", "unet", ["unet", "conv", "analytic"], "sampler: the config's U-Net denoiser and "
                      "forecaster (full DEF rollout), or a stand-in: a 3-layer conv net, or Gaussian data's exact ε "
                      "(the solver's own overhead).", flag_values=fv)
    flags.DEFINE_integer("lead_steps", 2, "sampler --eps=unet: forecast steps of the timed rollout.", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("net_width", 64, "sampler: hidden width of the conv ε network.", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("repeats", 3, "sampler, authors: timed runs (the median is reported).", flag_values=fv,
                         lower_bound=1)
    # train
    flags.DEFINE_enum("model", "both", ["forecaster", "diffusion", "both"], "train: which network's update to time: "
                      "G_φ, ε_θ or both.", flag_values=fv)
    flags.DEFINE_integer("steps", 20, "train, authors: timed updates per model (the median is reported).",
                         flag_values=fv, lower_bound=1)
    # loader
    flags.DEFINE_string("store", None, "loader, train: the Zarr store (default: config.data.store).", flag_values=fv)
    flags.DEFINE_integer("batches", 20, "loader: timed batches.", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("workers", None, "loader: Grain worker processes (default: config.data.workers); "
                         "prepare: worker processes (default 1).", flag_values=fv, lower_bound=0)
    # prepare
    flags.DEFINE_multi_string("src", None, "prepare: GRIB2 files/globs/directories (default: the synth output "
                              "directory of the config).", flag_values=fv)
    # authors
    flags.DEFINE_list("sizes", ["demo", "large"], "authors: sizes to compare (demo: 64x64, width 16, B = 4; large: "
                      "128x128, width 64, B = 2).", flag_values=fv)
    flags.DEFINE_list("cores", None, "authors: CPU cores both stacks are pinned to, e.g. 0 or 0,1 (default: all of "
                      "this process's); one thread per core.", flag_values=fv)
    flags.DEFINE_string("torch_python", None, "authors: Python of the torch + diffusers environment (default: "
                        ".venv-authors/bin/python; experiments/benchmarks/authors_stack/README.md).", flag_values=fv)
    flags.DEFINE_string("out", None, "JSON result file (default: WORKDIR/bench_TARGET.json).", flag_values=fv)


# Each target: (config, flags) -> (JSON result, printed table). The def_jax.bench modules import JAX, so they are
# imported when their target runs.


def _sampler(cfg, fv) -> tuple[dict, str]:
    from def_jax.bench import sampler as bench_sampler
    from def_jax.catalogue import load_catalogue

    height, width = parse_grid(fv.grid, cfg.data.grid_shape, example="64x64")
    if fv.eps == "unet":
        from def_jax.bench import rollout as bench_rollout

        if fv.channels:
            raise UserError("--channels: the U-Net benchmark takes its channels from the config's catalogue")
        result = bench_rollout.run_unet_bench(cfg, batch=fv.batch or cfg.ensemble.members, height=height,
                                              width=width, repeats=fv.repeats, lead_steps=fv.lead_steps)
        return result, bench_rollout.format_table(result)
    channels = fv.channels or load_catalogue(cfg.data.catalogue, cfg.data.levels).num_channels("state")
    result = bench_sampler.run_sampler_bench(
        cfg, batch=fv.batch or cfg.ensemble.members, height=height, width=width, channels=channels,
        eps_kind=fv.eps, net_width=fv.net_width, repeats=fv.repeats,
    )
    return result, bench_sampler.format_table(result)


def _train(cfg, fv) -> tuple[dict, str]:
    from def_jax.bench import train as bench_train

    if fv.store:
        cfg.data.store = fv.store
    models = bench_train.MODELS if fv.model == "both" else (fv.model,)
    result = bench_train.run_train_bench(cfg, models=models, steps=fv.steps, batch=fv.batch)
    return result, bench_train.format_table(result)


def _loader(cfg, fv) -> tuple[dict, str]:
    from def_jax.bench import loader as bench_loader

    t = cfg.training.forecaster
    result = bench_loader.run_loader_bench(
        fv.store or cfg.data.store, history=cfg.data.history, lead_steps=max(1, t.rollout_steps),
        batch_size=fv.batch or t.batch_size, crop=tuple(cfg.data.crop_shape),
        workers=cfg.data.workers if fv.workers is None else fv.workers, num_batches=fv.batches,
        period=cfg.data.train_period, normalization=cfg.data.normalization, seed=cfg.seed,
        in_memory=bool(cfg.data.in_memory),
    )
    return result, bench_loader.format_table(result)


def _prepare(cfg, fv) -> tuple[dict, str]:
    from def_jax.bench import prepare as bench_prepare
    from def_jax.catalogue import load_catalogue

    result = bench_prepare.run_prepare_bench(
        fv.src or [str(cli_data.default_grib_dir(cfg))], load_catalogue(cfg.data.catalogue, cfg.data.levels),
        workers=fv.workers or 1,
    )
    return result, bench_prepare.format_table(result)


def _authors(cfg, fv) -> tuple[dict, str]:
    import os

    from def_jax.bench import authors as bench_authors

    try:
        cores = [int(c) for c in fv.cores] if fv.cores else sorted(os.sched_getaffinity(0))
    except ValueError as e:
        raise UserError(f"--cores {','.join(fv.cores)}: expected core numbers, e.g. 0 or 0,1") from e
    result = bench_authors.run_authors_bench(
        cfg, sizes=fv.sizes, cores=cores, torch_python=fv.torch_python, steps=int(cfg.sampler.steps),
        guidance_scale=float(cfg.ensemble.guidance_scale), repeats=fv.repeats, updates=fv.steps)
    return result, bench_authors.format_table(result)


_RUNS = {"sampler": _sampler, "train": _train, "loader": _loader, "prepare": _prepare, "authors": _authors}
TARGETS = tuple(_RUNS)  # the positional argument of `def-jax bench`


def bench_run(inv: Invocation) -> int:
    if len(inv.args) != 1 or inv.args[0] not in TARGETS:
        got = " ".join(inv.args) or "nothing"
        raise UserError(f"bench needs one target: {' | '.join(TARGETS)}; got {got}")
    from def_jax.bench import write_json

    target = inv.args[0]
    main = True
    if target == "sampler" and inv.flags.eps == "unet":  # the rollout runs multi-host like a forecast
        main = start_processes(inv.config)
    result, table = _RUNS[target](inv.config, inv.flags)
    if not main:
        return 0
    print(table)
    out = output_path(inv, f"bench_{target}.json")
    write_json(result, out)
    print(f"wrote {out}")
    return 0
