"""The ensemble study (docs/RESULTS.md): DEF against the simple ensembles of the field and the deterministic run, on a
convective mini-HRRR, over several training seeds of ε_θ, with bootstrap intervals over forecast cycles.

    .venv/bin/python experiments/ensemble_study/run.py [WORKDIR]   (default runs/ensemble_study; about 2.5 h on 2 cores)

Every stage is a def-jax command and resumes or reuses what is finished, so the script can be rerun after an
interruption. Stages, with WORKDIR = W:

1. the world: ``synth`` (eight weeks of the convective mini-HRRR), ``prepare``, ``stats`` → ``W/mini_hrrr.zarr``;
2. G_φ, shared by every ensemble: ``train-forecaster`` → ``W/g/forecaster``;
3. ε_θ for each seed: ``train-diffusion --config.seed=S`` → ``W/sS/diffusion`` (the seeds' G_φ is ``W/g``'s), then
   ``check-denoiser`` → ``W/sS/check_denoiser``; an ε_θ that trains without G_φ (unconditional DEF) trains beside
   it, else after it;
4. tuning on the validation week with seed 0's models, beside the training of the other seeds (each job starts when
   a core is free and the models it uses are trained):
   ``tune`` for DEF (λ at K = 1) and for each baseline (its amplitude, or the lag), by CRPS (config.py) →
   ``W/tuning/<ensemble>/tuning.csv``; the chosen settings apply to every seed and are written to
   ``W/chosen_settings.json``, whose entries stand for any ensemble whose tuning table was removed;
5. test forecasts at the chosen settings, from initial times ``EVERY`` hours apart over the test period: DEF for
   every seed (the seed changes ε_θ and the walks' draws), the baselines, which do not use ε_θ, for the first seed →
   ``W/sS/<ensemble>/forecasts``, and ``evaluate`` → ``W/sS/<ensemble>/evaluation``; then the plan's last stage,
   if it has one (the Held–Suarez study's Gaussian ensemble at DEF's spread);
6. ``summarize.py W`` → ``W/RESULTS_tables.md`` (the tables of docs/RESULTS.md) and ``plot`` of all ensembles;
7. with ``GSEEDS`` beyond the first: for each further G_φ seed g, ``W/gseed<g>`` holds a G_φ trained with seed g, an
   ε_θ of the first ε_θ seed trained with it, and every ensemble at the chosen settings (not tuned again) over the same
   test cycles, evaluated; ``summarize.py`` then tables the ensembles' ranking per G_φ seed (does G_φ's seed change
   which ensemble wins?).

Independent jobs (the seeds' training, the forecasts and evaluations) run two at a time, each pinned to one core.
Environment: SEEDS (ε_θ seeds, default "0 1 2"), GSEEDS (G_φ seeds, default "0": the first is the study's G_φ;
``GSEEDS="0 1 2"`` adds stage 7, about an hour more), EVERY (hours between test cycles, 30: 11 cycles whose initial times go round
00, 06, 12 and 18 UTC), JOBS (parallel jobs, 2), STUDY_FLAGS (def-jax flags added to every command's config, e.g.
smaller budgets for a trial run of the stages).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
DJ = str(ROOT / ".venv" / "bin" / "def-jax")
CONFIG = ROOT / "experiments" / "ensemble_study" / "config.py"
ENSEMBLES = ("def", "gaussian", "correlated", "bred", "lagged")
GRIDS = {  # the validation grids of step 4
    "def": {"scales": "0.05,0.1,0.2,0.35,0.5,0.7", "walks": "1"},  # K = 1: each walk costs S network calls per member
    "gaussian": {"scales": "0.25,0.5,1,2"},
    "correlated": {"scales": "0.25,0.5,1,2"},
    "bred": {"scales": "0.5,1,2,4"},
    "lagged": {"scales": "1,2,3"},
}


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: list[str], logfile: Path, core: int | None = None) -> None:
    """Run one def-jax command (pinned to ``core``), its output into ``logfile``; raise on failure."""
    cmd = (["taskset", "-c", str(core)] if core is not None else []) + args
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(args)} — see {logfile}")


def parallel(jobs: list[tuple], width: int) -> None:
    """Run ``jobs`` ``width`` at a time, each pinned to its own core. A job is (args, logfile) or (args, logfile,
    needs): ``needs`` are the indices of jobs of the same list that must have finished before it starts; a free core
    takes the first queued job whose needs are met."""
    cores = list(range(width))
    running: list[tuple[subprocess.Popen, int, int, object]] = []
    queue = list(range(len(jobs)))
    done: set[int] = set()
    while queue or running:
        while cores:
            ready = [i for i in queue if set(jobs[i][2] if len(jobs[i]) > 2 else ()) <= done]
            if not ready:
                break
            i = ready[0]
            queue.remove(i)
            args, logfile = jobs[i][:2]
            core = cores.pop(0)
            logfile.parent.mkdir(parents=True, exist_ok=True)
            out = open(logfile, "a")
            out.write(f"$ {' '.join(args)}\n")
            out.flush()
            proc = subprocess.Popen(["taskset", "-c", str(core)] + args, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=ROOT)
            running.append((proc, core, i, out))
        if not running:
            raise SystemExit(f"jobs {queue} wait for jobs that never run")
        time.sleep(2)
        for item in list(running):
            proc, core, i, out = item
            if proc.poll() is None:
                continue
            out.close()
            running.remove(item)
            cores.append(core)
            if proc.returncode:
                for other, _, _, o in running:
                    other.terminate()
                    o.close()
                raise SystemExit(f"failed ({proc.returncode}): {' '.join(jobs[i][0])} — see {jobs[i][1]}")
            done.add(i)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What makes a study of this shape: its config file (``get_config(WORKDIR)``), stage 1 (``world(w, flags)``
    makes the store), the ensembles and their validation grids, the flags of ``tune``, the variables of the figures,
    and what ``summarize.py`` tables (``summary``: written to ``W/study.json``, its keys documented there)."""

    config: Path
    world: Callable[[Path, list], None]
    ensembles: tuple = ENSEMBLES
    grids: dict = dataclasses.field(default_factory=lambda: dict(GRIDS))
    tune_flags: tuple = ("--every=24", "--max_cycles=4")
    plot_variables: str = "refc,t2m,u10,z500"
    every: int = 30
    default_workdir: str = "runs/ensemble_study"
    summary: dict = dataclasses.field(default_factory=dict)
    evaluate_flags: tuple = ()  # added to the test forecasts' `evaluate` (not to `tune`'s)
    # after the test forecasts, before the tables: ``last_stage(study_run)`` → the labels of the ensemble folders it
    # added under ``W/s<first seed>/``, tabled and plotted beside the plan's ensembles
    last_stage: Callable[["StudyRun"], list] | None = None


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One run of a plan: its workdir, the flags every command takes, the seeds, and the test cycles."""

    plan: Plan
    w: Path
    flags: list  # --config=… and STUDY_FLAGS
    seeds: list
    every: int
    width: int  # parallel jobs

    def test_cycles(self) -> tuple[list, str]:
        return test_inits(study_config(self.plan, self.w), self.every)

    def forecast_job(self, workdir: Path, seed: int, overrides: list, out: Path, name: str) -> tuple:
        """``forecast`` of the test cycles with ``overrides`` → ``out/forecasts`` (a job of :func:`parallel`)."""
        inits, init_text = self.test_cycles()
        return ([DJ, "forecast", *self.flags, f"--workdir={workdir}", f"--config.seed={seed}", *overrides,
                 f"--init={init_text}", f"--cycles={len(inits)}", f"--every={self.every}",
                 f"--out={out / 'forecasts'}"], self.w / "logs" / f"forecast_{name}.log")

    def evaluate_job(self, out: Path, name: str) -> tuple | None:
        """``evaluate`` of ``out/forecasts`` → ``out/evaluation``; None when its scores exist."""
        if (out / "evaluation" / "scores.csv").exists():
            return None
        return ([DJ, "evaluate", *self.flags, *self.plan.evaluate_flags, f"--forecasts={out / 'forecasts'}",
                 f"--out={out / 'evaluation'}"], self.w / "logs" / f"evaluate_{name}.log")

    def tables(self) -> None:
        """``summarize.py W`` → ``W/RESULTS_tables.md``."""
        with open(self.w / "RESULTS_tables.md", "w") as out:
            if subprocess.run([sys.executable, str(CONFIG.parent / "summarize.py"), str(self.w)], stdout=out,
                              cwd=ROOT).returncode:
                raise SystemExit("summarize.py failed")


def study_config(plan: Plan, w: Path):
    """The study's config (``plan.config``) for workdir ``w``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_config", plan.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(str(w))


def chosen(table: Path, criterion: str) -> dict:
    """The chosen row of a tuning table by ``criterion`` (the config's ``tuning.criterion``, as ``tune`` picks it)."""
    import pandas as pd

    from def_jax.tuning import pick_best

    return pick_best(pd.read_csv(table).to_dict("records"), criterion)


def setting_overrides(row: dict) -> list[str]:
    from def_jax.tuning import best_overrides

    return best_overrides(row).split()


def mini_hrrr_world(w: Path, c: list) -> None:
    """Stage 1 of the mini-HRRR study: ``synth`` (eight weeks), ``prepare``, ``stats`` → ``W/mini_hrrr.zarr``."""
    store = w / "mini_hrrr.zarr"
    if not (w / "grib" / "synth.json").exists():
        run([DJ, "synth", *c, f"--out={w / 'grib'}"], w / "logs" / "world.log")
    run([DJ, "prepare", *c, f"--src={w / 'grib'}", "--workers=2"], w / "logs" / "world.log")
    if not has_stats(store):
        run([DJ, "stats", *c], w / "logs" / "world.log")


def test_inits(cfg, every: int) -> tuple[list, str]:
    """The test cycles' initial times, ``every`` hours apart from the start of ``data.test_period`` while the whole
    forecast fits in it, and the first as ``--init`` text."""
    import numpy as np

    from def_jax.data.schema import parse_period

    start, end = parse_period(cfg.data.test_period, "test_period")
    lead = np.timedelta64(int(cfg.ensemble.lead_hours), "h")
    inits, t = [], start
    while t + lead <= end:
        inits.append(t)
        t = t + np.timedelta64(every, "h")
    return inits, np.datetime_as_string(np.datetime64(inits[0], "h"), unit="h")


def has_stats(store: Path) -> bool:
    """Whether the store's normalization statistics and spectral covariance are written."""
    import xarray as xr

    from def_jax.data import schema

    with xr.open_zarr(store, consolidated=False) as ds:
        return bool(ds.attrs.get("stats_train_period")) and schema.SPECTRAL_COVARIANCE in ds


def main() -> int:
    return run_study(Plan(config=CONFIG, world=mini_hrrr_world))


def run_study(plan: Plan) -> int:
    """The stages of the module docstring for ``plan``; WORKDIR from the command line, the environment's settings."""
    w = Path(sys.argv[1] if len(sys.argv) > 1 else plan.default_workdir).absolute()
    seeds = [int(s) for s in os.environ.get("SEEDS", "0 1 2").split()]
    gseeds = [int(s) for s in os.environ.get("GSEEDS", "0").split()]
    every = int(os.environ.get("EVERY", str(plan.every)))
    width = int(os.environ.get("JOBS", "2"))
    ensembles = plan.ensembles
    w.mkdir(parents=True, exist_ok=True)
    (w / "study.json").write_text(json.dumps(dict(plan.summary, ensembles=list(ensembles)), indent=1) + "\n")
    c = [f"--config={plan.config}:{w}", *shlex.split(os.environ.get("STUDY_FLAGS", ""))]
    this = StudyRun(plan, w, c, seeds, every, width)
    t0 = time.time()

    log("1. the world")
    plan.world(w, c)

    from def_jax.training.run import needs_forecaster

    forecaster = ([DJ, "train-forecaster", *c, f"--workdir={w / 'g'}"], w / "logs" / "forecaster.log")
    beside = not needs_forecaster(study_config(plan, w))  # ε_θ trains without G_φ: side by side
    if beside:
        log(f"2. G_φ, and 3. ε_θ for seeds {seeds} beside it; 4. tuning on the validation period (seed 0's models)")
    else:
        log("2. G_φ")
        run(*forecaster)
        log(f"3. ε_θ for seeds {seeds}, and 4. tuning on the validation period (seed 0's models)")

    def training(s: int) -> tuple[list[str], Path]:
        sw = w / f"s{s}"
        sw.mkdir(exist_ok=True)
        if not (sw / "forecaster").exists():
            (sw / "forecaster").symlink_to(w / "g" / "forecaster")
        return ([DJ, "train-diffusion", *c, f"--workdir={sw}", f"--config.seed={s}"],
                w / "logs" / f"diffusion_s{s}.log")

    s0 = w / f"s{seeds[0]}"
    # an earlier run's choices stand for ensembles whose tuning table is gone (chosen_settings.json keeps them)
    earlier = json.loads((w / "chosen_settings.json").read_text()) if (w / "chosen_settings.json").exists() else {}
    tuning = []
    for kind in ensembles:
        out = w / "tuning" / kind
        if (out / "tuning.csv").exists() or kind in earlier:
            continue
        grid = plan.grids[kind]
        args = [DJ, "tune", *c, f"--workdir={s0}", f"--config.seed={seeds[0]}", f"--perturbation={kind}",
                f"--scales={grid['scales']}", f"--out={out}", *plan.tune_flags]
        if "walks" in grid:
            args.append(f"--walks={grid['walks']}")
        tuning.append((args, w / "logs" / f"tune_{kind}.log"))
    pending_checks = [s for s in seeds if not (w / f"s{s}" / "check_denoiser" / "denoiser_check.json").exists()]
    checks = [([DJ, "check-denoiser", *c, f"--workdir={w / f's{s}'}", f"--config.seed={s}"],
               w / "logs" / f"check_s{s}.log") for s in pending_checks]
    # the seeds train (beside G_φ when ε_θ does not need it); the tuning on seed 0's models and the checks start as
    # soon as G_φ and the ε_θ they use are trained, while the other seeds train
    trainings = ([forecaster] if beside else []) + [training(s) for s in seeds]
    g = [0] if beside else []
    seed_job = {s: len(g) + n for n, s in enumerate(seeds)}
    parallel(trainings + [(*job, (*g, seed_job[seeds[0]])) for job in tuning]
             + [(*job, (*g, seed_job[s])) for s, job in zip(pending_checks, checks)], width)
    criterion = str(study_config(plan, w).tuning.criterion)
    settings = {kind: chosen(w / "tuning" / kind / "tuning.csv", criterion)
                if (w / "tuning" / kind / "tuning.csv").exists() else earlier[kind] for kind in ensembles}
    (w / "chosen_settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")
    # the tuning's forecast files are not needed once scored (the Held–Suarez grids' fill 23 GB); tables stay
    for folder in (w / "tuning").glob("*/*/forecasts"):
        shutil.rmtree(folder)
    for kind, row in settings.items():
        log(f"  {kind}: {' '.join(setting_overrides(row))} (validation spread/skill {row['mean_ssr']:.2f}, "
            f"CRPS / deterministic MAE {row['crps_over_deterministic_mae']:.3f})")

    log(f"5. test forecasts every {every} h and their evaluation")
    forecasts, evaluations = [], []
    for s in seeds:
        for kind in ensembles:
            if kind != "def" and s != seeds[0]:
                continue  # the baselines do not use ε_θ: the seeds' other models are the same G_φ
            d = w / f"s{s}" / kind
            forecasts.append(this.forecast_job(w / f"s{s}", s, setting_overrides(settings[kind]), d, f"s{s}_{kind}"))
            evaluations.append(this.evaluate_job(d, f"s{s}_{kind}"))
    parallel(forecasts, width)
    parallel([job for job in evaluations if job], width)
    if plan.last_stage:
        extra = plan.last_stage(this)
        ensembles = (*ensembles, *extra)
        record = json.loads((w / "study.json").read_text())
        (w / "study.json").write_text(json.dumps(dict(record, ensembles=list(ensembles)), indent=1) + "\n")

    log("6. tables and figures")
    this.tables()
    evals = ",".join(str(w / f"s{seeds[0]}" / kind / "evaluation") for kind in ensembles)
    if (w / "plots").exists():
        shutil.rmtree(w / "plots")
    run([DJ, "plot", *c, f"--evaluation={evals}", f"--variables={plan.plot_variables}",
         f"--forecasts={w / f's{seeds[0]}' / 'def' / 'forecasts'}", f"--out={w / 'plots'}"], w / "logs" / "plot.log")
    if gseeds[1:]:
        s0 = seeds[0]
        log(f"7. G_φ seeds {gseeds[1:]}: G_φ, ε_θ seed {s0}, every ensemble at the chosen settings")
        g_jobs, d_jobs, f_jobs, e_jobs = [], [], [], []
        for g in gseeds[1:]:
            gw = w / f"gseed{g}"
            (gw / f"s{s0}").mkdir(parents=True, exist_ok=True)
            if not (gw / f"s{s0}" / "forecaster").exists():
                (gw / f"s{s0}" / "forecaster").symlink_to(gw / "g" / "forecaster")
            g_jobs.append(([DJ, "train-forecaster", *c, f"--workdir={gw / 'g'}", f"--config.seed={g}"],
                           w / "logs" / f"forecaster_g{g}.log"))
            d_jobs.append(([DJ, "train-diffusion", *c, f"--workdir={gw / f's{s0}'}", f"--config.seed={s0}"],
                           w / "logs" / f"diffusion_g{g}_s{s0}.log"))
            for kind in plan.ensembles:
                d = gw / f"s{s0}" / kind
                f_jobs.append(this.forecast_job(gw / f"s{s0}", s0, setting_overrides(settings[kind]), d,
                                                f"g{g}_{kind}"))
                e_jobs.append(this.evaluate_job(d, f"g{g}_{kind}"))
        for jobs in (g_jobs, d_jobs, f_jobs, e_jobs):  # the seeds side by side, one per core
            parallel([job for job in jobs if job], width)
        this.tables()

    log(f"done in {(time.time() - t0) / 60:.1f} min: {w / 'RESULTS_tables.md'}, {w / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
