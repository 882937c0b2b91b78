"""``def-jax forecast``: ensemble forecasts (DEF or a baseline ensemble) for one or more cycles, streamed to CF NetCDF.

Per cycle: the k initial states from the store (with the analyses and forcings of the steps before the initial time
where bred or lagged members need them) → per member chunk the initial-state program, then the rollout program of
:mod:`def_jax.forecast.rollout`, one jitted ``lax.scan`` per (member chunk × lead chunk) with the members sharded over
the mesh's data axis → physical units and constraints → the slab is written to the file; then the deterministic G_φ
rollout (a one-member program without perturbation), then the ensemble statistics. What the members are made of is
:class:`def_jax.forecast.ensemble.Ensemble`. Finished cycles (their final file exists) are skipped unless
``overwrite``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
from flax import nnx

from def_jax import __version__, parallel
from def_jax.data import schema
from def_jax.data.normalization import standardize_fields
from def_jax.diffusion.sampler_configs import sampler_from_config
from def_jax.diffusion.schedules import make_schedule
from def_jax.errors import UserError
from def_jax.evaluation.scores import event_thresholds
from def_jax.forecast.ensemble import Ensemble
from def_jax.forecast.inputs import ForecastInputs
from def_jax.forecast.files import NetCDFFile, ZarrFile, forecast_filename
from def_jax.forecast.rollout import InitialSpec, RolloutSpec, initial_inputs, make_initial, make_rollout
from def_jax.models.networks import direct_condition
from def_jax.progress import progress
from def_jax.models.build import store_channels
from def_jax.training.checkpoint import config_dict, load_trained


@dataclasses.dataclass
class Models:
    """Trained networks (graph definitions and EMA/plain weights) and where they came from."""

    forecaster: Optional[tuple[nnx.GraphDef, Any]]
    denoiser: Optional[tuple[nnx.GraphDef, Any]]
    info: dict


def load_models(cfg: Any, workdir: Path, inputs: ForecastInputs, mesh, log: Callable) -> Models:
    direct = cfg.diffusion.mode == "direct"
    channels = store_channels(inputs)
    cat_json, cfg_d = inputs.catalogue.to_json(), config_dict(cfg)
    need_g = (not direct) or bool(cfg.diffusion.direct_residual) or bool(cfg.ensemble.include_deterministic)
    need_d = Ensemble.from_config(cfg).uses_denoiser
    info, f, d = {}, None, None
    which = cfg.ensemble.checkpoint
    if need_g:
        g, p, info["forecaster"] = load_trained("forecaster", cfg, workdir, channels, mesh, cat_json, cfg_d, which,
                                                log)
        f = (g, p)
    if need_d:
        g, p, info["denoiser"] = load_trained("diffusion", cfg, workdir, channels, mesh, cat_json, cfg_d, which, log)
        d = (g, p)
    return Models(f, d, info)


def _forecast_fn(models: Models, f_params) -> Optional[Callable]:
    if f_params is None:
        return None
    g = nnx.merge(models.forecaster[0], f_params)
    return lambda s, f, tf, st: g(s, f, tf, st)


def build_program(spec: RolloutSpec, models: Models, cfg: Any, sample: Callable) -> Callable:
    """The jitted rollout for ``spec`` with the sampler ``sample``: ``program(f_params, d_params, states, member_ids,
    base_key, step0, forcings, time_features, statics, scale, amplitude) -> (states, outputs)``."""
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    d_graphdef = models.denoiser[0] if models.denoiser else None

    def program(f_params, d_params, states, member_ids, base_key, step0, forcings, time_features, statics, scale,
                amplitude):
        eps_net = None
        if d_params is not None:
            e = nnx.merge(d_graphdef, d_params)
            eps_net = lambda x, tau, c: e(x, tau, c)  # noqa: E731
        rollout = make_rollout(_forecast_fn(models, f_params), eps_net, sample, schedule, spec,
                               condition_fn=direct_condition)
        return rollout(states, member_ids, base_key, step0, forcings, time_features, statics, scale, amplitude)

    return jax.jit(program)


def build_initial_program(spec: InitialSpec, models: Models) -> Callable:
    """The jitted initial-state program: ``program(f_params, analyses, member_ids, base_key, forcings,
    time_features, statics, scale, amplitude) -> states``."""

    def program(f_params, analyses, member_ids, base_key, forcings, time_features, statics, scale, amplitude):
        initial = make_initial(_forecast_fn(models, f_params), spec)
        return initial(analyses, member_ids, base_key, forcings, time_features, statics, scale, amplitude)

    return jax.jit(program)


def cycle_key(seed: int, init: np.datetime64) -> jax.Array:
    """The base key of a cycle: the config seed with the initial time (whole hours since 1970) folded in."""
    hours = int((np.datetime64(init, "h") - np.datetime64("1970-01-01T00", "h")) / np.timedelta64(1, "h"))
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), hours)


class Forecaster:
    """Everything that stays the same across cycles: inputs, models, mesh and compiled programs.

    ``trace_scale``: the ensemble's scale is always a traced argument of the programs, so that forecasts at several
    scales (``run_cycle(..., ensemble=...)``, tuning) share one compiled program per shape."""

    def __init__(self, cfg: Any, workdir: Path, log: Callable = print, inits: tuple = (), *,
                 trace_scale: bool = False, max_pre_steps: Optional[int] = None):
        per_sample = cfg.data.normalization == "per_sample"
        if cfg.ensemble.corrector and not per_sample:
            raise UserError("config.ensemble.corrector: the corrector re-standardizes each sample's fields, which "
                            "belongs to per-sample normalization (--config.data.normalization=per_sample); set it to "
                            "False")
        try:  # the sampler's own check: only DPM-Solver++ takes the corrector
            self.sample = sampler_from_config(cfg.sampler, standardize_fields if cfg.ensemble.corrector else None)
        except ValueError as err:
            raise UserError(f"config.sampler: {err}") from None
        self.cfg, self.log = cfg, log
        self.ensemble = Ensemble.from_config(cfg)
        if per_sample and self.ensemble.kind not in ("def", "direct"):
            raise UserError(f"config.ensemble.perturbation={self.ensemble.kind!r}: the baseline ensembles' amplitudes "
                            f"are in units of the global normalization; per-sample forecasts run def or direct")
        self.trace_scale = bool(trace_scale)
        self.direct = self.ensemble.kind == "direct"
        e = cfg.ensemble
        self.history = int(cfg.diffusion.direct_history if self.direct else cfg.data.history)
        if self.direct and self.history < cfg.data.history:
            raise UserError("config.diffusion.direct_history must be >= data.history")
        self.inputs = ForecastInputs(cfg.data.store, cfg.data, self.history)
        self.dt = self.inputs.dt_hours
        self.dx_km = self.inputs.grid_spacing_km()
        self.steps = int(round(e.lead_hours / self.dt))
        if self.steps < 1:
            raise UserError(f"config.ensemble.lead_hours={e.lead_hours}: need at least one step of {self.dt} h")
        self.members = int(e.members)
        # the config's whole mesh: members over `data`, the grid's rows over `space`; every process of a
        # multi-host run computes its devices' part of each chunk, and process 0 writes the files
        self.mesh = parallel.make_mesh(cfg.parallel.data_axis, cfg.parallel.spatial_axis)
        parallel.check_spatial(self.mesh, self.inputs.grid_shape[0])
        self.main = jax.process_index() == 0
        self._rep = parallel.replicated(self.mesh)
        n_data = self.mesh.shape[parallel.DATA]
        chunk = int(e.member_chunk) or self.members
        self.member_chunk = -(-chunk // n_data) * n_data  # a multiple of the data-axis devices
        self.lead_chunk = min(int(e.lead_chunk), self.steps)
        pre = self.ensemble.pre_steps if max_pre_steps is None else int(max_pre_steps)
        for t in inits:  # before loading models: a missing input is found in a second, not after the set-up
            self.inputs.check_available(np.datetime64(t, "ns"), self.steps, pre)
        self.models = load_models(cfg, Path(workdir), self.inputs, self.mesh, log)
        self.amplitude = (parallel.put(self.inputs.one_step_std(), self._rep) if self.ensemble.uses_amplitude
                          else None)  # [C]
        self._programs: dict[tuple, Callable] = {}
        self.statics = parallel.put(self.inputs.statics(), self._field(3, 0))  # [H, W, C_st]
        self._grid = None
        self._inputs_cache: dict[tuple, tuple[jax.Array, jax.Array]] = {}  # this cycle's, by (init, n0, k, L)

    def _field(self, ndim: int, y_axis: int, member_axis: Optional[int] = None):
        return parallel.field_sharding(self.mesh, ndim, y_axis, member_axis)

    # --- programs ------------------------------------------------------------------------------------------------

    def _spec(self, ensemble: Ensemble, lead_steps: int, deterministic: bool) -> RolloutSpec:
        cfg = self.cfg
        if deterministic:
            spec = RolloutSpec(mode="def", walks=0, history=int(cfg.data.history),
                               forecaster_history=int(cfg.data.history), lead_steps=lead_steps, perturbation="none")
        else:
            spec = ensemble.step_spec(cfg, self.history, lead_steps, self.dx_km, trace_scale=self.trace_scale)
        return dataclasses.replace(spec, restandardize=self.inputs.per_sample)

    def program(self, lead_steps: int, deterministic: bool, ensemble: Optional[Ensemble] = None) -> Callable:
        spec = self._spec(ensemble or self.ensemble, lead_steps, deterministic)
        if spec not in self._programs:
            self._programs[spec] = build_program(spec, self.models, self.cfg, self.sample)
        return self._programs[spec]

    def initial_program(self, ensemble: Ensemble) -> tuple[InitialSpec, Callable]:
        spec = ensemble.initial_spec(self.history, int(self.cfg.data.history), self.dx_km)
        if spec not in self._programs:
            self._programs[spec] = build_initial_program(spec, self.models)
        return spec, self._programs[spec]

    def initial_states(self, ensemble: Ensemble, init: np.datetime64, member_ids: np.ndarray, base_key
                       ) -> jax.Array:
        """The members' input states at the initial time [b, k, H, W, C] (sharded over the data axis)."""
        spec, program = self.initial_program(ensemble)
        n_an, n_f, n_t = initial_inputs(spec)
        analyses = parallel.put(self.inputs.states(init, 1 - n_an, n_an), self._field(4, 1))  # [P+k, H, W, C]
        forcings = parallel.put(self.inputs.forcings(init, 1 - n_an, n_f), self._field(4, 1))  # [P+k−1, H, W, C_f]
        tf = parallel.put(self.inputs.time_features(init, 1 - n_an, n_t), self._rep)  # [P+k, F]
        ids = parallel.put(np.asarray(member_ids, np.int32), parallel.leading_sharding(self.mesh))
        f = self.models.forecaster[1] if self.models.forecaster else None
        states = program(f, analyses, ids, base_key, forcings, tf, self.statics, np.float32(ensemble.scale),
                         self.amplitude)
        return jax.device_put(states, self._field(5, 2, member_axis=0))

    def _chunk_inputs(self, init, n0: int, k: int, lead_steps: int) -> tuple[jax.Array, jax.Array]:
        """Forcings [k+L−1, H, W, C_f] and time features [k+L, F] of a lead chunk, read once per cycle and shared by
        every member chunk (``run_cycle`` empties the cache)."""
        key = (np.datetime64(init, "ns"), int(n0), int(k), int(lead_steps))
        if key not in self._inputs_cache:
            forcings = self.inputs.forcings(init, n0 - k + 1, k + lead_steps - 1)  # [k+L−1, H, W, C_f]
            tf = self.inputs.time_features(init, n0 - k + 1, k + lead_steps)  # [k+L, F]
            self._inputs_cache[key] = (parallel.put(forcings, self._field(4, 1)), parallel.put(tf, self._rep))
        return self._inputs_cache[key]

    def run_chunk(self, states: jax.Array, member_ids: np.ndarray, base_key, init, n0: int, lead_steps: int,
                  deterministic: bool = False, ensemble: Optional[Ensemble] = None, gather: bool = True
                  ) -> tuple[jax.Array, Any]:
        """One call: states [b, k, H, W, C] → (states', outputs [L, b, H, W, C] normalized: on the host, all of them
        on every process, or with ``gather`` False the global array as the mesh holds it)."""
        ensemble = ensemble or self.ensemble
        k = states.shape[1]
        forcings, tf = self._chunk_inputs(init, n0, k, lead_steps)
        members = None if deterministic else 0  # the deterministic run's one member is on every data device
        states = jax.device_put(states, self._field(5, 2, member_axis=members))
        ids = parallel.put(np.asarray(member_ids, np.int32),
                           self._rep if deterministic else parallel.leading_sharding(self.mesh))
        f = self.models.forecaster[1] if self.models.forecaster else None
        d = self.models.denoiser[1] if self.models.denoiser and not deterministic else None
        program = self.program(lead_steps, deterministic, ensemble)
        amplitude = None if deterministic else self.amplitude
        states, out = program(f, d, states, ids, base_key, np.int32(n0), forcings, tf, self.statics,
                              np.float32(ensemble.scale), amplitude)
        return states, (parallel.fetch(out) if gather else out)  # [L, b, H, W, C]

    # --- a cycle -------------------------------------------------------------------------------------------------

    def attrs(self, init: np.datetime64, ensemble: Ensemble) -> dict:
        cfg, s = self.cfg, self.cfg.sampler
        mode = "def" if not self.direct else ("direct_residual" if cfg.diffusion.direct_residual else "direct")
        info = self.models.info
        return {
            "title": f"def-jax {ensemble.kind} ensemble forecast", "institution": "def-jax",
            "source": f"def-jax {__version__}", "mode": mode, "members": self.members,
            **ensemble.settings(), "sampler": s.name, "sampler_steps": int(s.steps),
            "sampler_order": int(s.order), "sampler_method": s.method, "sampler_spacing": s.spacing,
            "schedule": cfg.diffusion.schedule, "diffusion_steps": int(cfg.diffusion.num_steps),
            "dt_hours": self.dt, "seed": int(cfg.seed), "member_chunk": self.member_chunk,
            "normalization": ("per_sample: physical units from the initial state's spatial mean and std"
                              if self.inputs.per_sample else "global"),
            "corrector": int(bool(cfg.ensemble.corrector)),
            "lead_chunk": self.lead_chunk,
            "forecaster_checkpoint": _ckpt_text(info.get("forecaster")),
            "denoiser_checkpoint": _ckpt_text(info.get("denoiser")),
            "store": str(Path(cfg.data.store).absolute()), "config": config_dict(cfg),
            "catalogue": self.inputs.catalogue.to_json(),
            "init_time_iso": str(np.datetime_as_string(np.datetime64(init, "m"), unit="m")),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "history": "def-jax forecast",
        }

    def grid(self) -> dict:
        """The store's coordinates and grid mapping (read once, shared by every cycle's file)."""
        if self._grid is None:
            ds = schema.open_store(self.cfg.data.store)
            self._grid = {"latitude": ds["latitude"].values, "longitude": ds["longitude"].values, "y": ds["y"].values,
                          "x": ds["x"].values, "crs": dict(ds[schema.CRS].attrs)}
        return self._grid

    def run_cycle(self, init: np.datetime64, out_dir: Path, ensemble: Optional[Ensemble] = None) -> Path:
        """Forecast one cycle into ``out_dir`` with this config's ensemble, or ``ensemble`` (the same kind and
        members at another scale: no new set-up, and with ``trace_scale`` no new compilation)."""
        cfg = self.cfg
        ensemble = ensemble or self.ensemble
        if (ensemble.kind, ensemble.members) != (self.ensemble.kind, self.ensemble.members):
            raise ValueError(f"run_cycle: a {ensemble.kind} ensemble of {ensemble.members} members on a forecaster "
                             f"set up for {self.ensemble.kind} with {self.ensemble.members}")
        init = np.datetime64(init, "ns")
        fmt = str(cfg.ensemble.format)
        path = Path(out_dir) / forecast_filename(init, fmt)
        self._inputs_cache.clear()  # forcings of the previous cycle
        # fails early, naming the time, if anything is unwritten
        self.inputs.check_available(init, self.steps, ensemble.pre_steps)
        initial = self.inputs.initial_states(init)  # [k, H, W, C]
        reference = self.inputs.initial_reference(init) if self.inputs.per_sample else None  # ([C], [C])
        key = parallel.put(np.asarray(cycle_key(cfg.seed, init)), self._rep)
        mc, lc = self.member_chunk, self.lead_chunk
        m_chunks = list(range(0, self.members, mc))
        l_chunks = list(range(0, self.steps, lc))
        det = bool(cfg.ensemble.include_deterministic)
        writer, done, det_done = self._open_file(path, fmt, init, ensemble, m_chunks)
        total = len(m_chunks) * len(l_chunks) + (len(l_chunks) if det else 0)
        t_start, programs = time.perf_counter(), len(self._programs)
        complete = False
        try:
            with progress(total, f"forecast {path.stem[9:]}", "chunk", enabled=self.main) as bar:
                for m0, finished in zip(m_chunks, done):
                    if finished:  # a resumed Zarr store: this member chunk is written
                        bar.update(len(l_chunks))
                        continue
                    ids = np.arange(m0, m0 + mc)  # padded to the chunk size: extra members are computed, dropped
                    keep = min(mc, self.members - m0)
                    states = self.initial_states(ensemble, init, ids, key)  # [mc, k, H, W, C]
                    for n0 in l_chunks:
                        steps = min(lc, self.steps - n0)
                        states, out = self.run_chunk(states, ids, key, init, n0, steps, ensemble=ensemble,
                                                     gather=fmt == "netcdf")
                        self._write(writer, out, m0, keep, n0, reference)
                        bar.update(1)
                    self._record(writer, fmt, member_chunk=m0)
                if det and not det_done:
                    k = int(cfg.data.history)
                    states = parallel.put(initial[self.history - k:][None], self._field(5, 2))  # [1, k, H, W, C]
                    for n0 in l_chunks:
                        steps = min(lc, self.steps - n0)
                        states, out = self.run_chunk(states, np.zeros(1), key, init, n0, steps, deterministic=True,
                                                     gather=fmt == "netcdf")
                        self._write(writer, out, None, 1, n0, reference)
                        bar.update(1)
                    self._record(writer, fmt, deterministic=True)
            parallel.barrier(f"{path.name}: members written")
            if self.main:
                writer.write_statistics()
            complete = True
        finally:
            final = writer.close(complete) if self.main else None
        seconds = time.perf_counter() - t_start
        if not self.main:
            return path
        self.log(f"wrote {final}: {self.members} members × {self.steps} steps of {self.dt:g} h in {seconds:.1f} s "
                 f"({self.members * self.steps / seconds:.2f} member-steps/s"
                 f"{', compilation included' if len(self._programs) > programs else ''})")
        return final

    def _open_file(self, path: Path, fmt: str, init, ensemble: Ensemble, m_chunks: list[int]):
        """The cycle's file (NetCDF: process 0's only; Zarr: every process's, resumed when a killed run left one
        with the same settings), which member chunks are written and whether the deterministic run is."""
        cfg = self.cfg
        kw = dict(init=init, lead_hours=self.dt * (1 + np.arange(self.steps)), members=self.members,
                  catalogue=self.inputs.catalogue, grid=self.grid(), attrs=self.attrs(init, ensemble),
                  thresholds=event_thresholds(cfg),
                  deterministic=bool(cfg.ensemble.include_deterministic))
        if fmt == "netcdf":
            # process 0 writes a NetCDF file; the other processes have none (None)
            return (NetCDFFile(path, **kw) if self.main else None), [False] * len(m_chunks), False
        saved = ZarrFile.resumable(path, kw["attrs"]) if self.main else None
        state = parallel.agree([saved is not None]
                               + [m0 in (saved or {}).get("done_member_chunks", []) for m0 in m_chunks]
                               + [bool((saved or {}).get("deterministic_done"))])
        resume, done, det_done = state[0], state[1:-1], state[-1]
        rows = self.inputs.grid_shape[0] // self.mesh.shape[parallel.SPACE]  # one device's rows per chunk
        writer = ZarrFile(path, create=not resume, rows=rows, **kw) if self.main else None
        parallel.barrier(f"{path.name}: created")
        if not self.main:
            writer = ZarrFile(path, create=False, rows=rows, **kw)
        if resume:
            self.log(f"{path.name}.partial: resuming, {sum(done)} of {len(m_chunks)} member chunk(s) written")
        return writer, done, det_done

    def _write(self, writer, out, m0: Optional[int], keep: int, n0: int, reference=None) -> None:
        """One chunk's output into the file: ``out`` [L, b, H, W, C] normalized, gathered on the host (NetCDF,
        written by process 0) or a global array whose parts each process writes (Zarr); ``m0`` None: the
        deterministic run; ``reference``: per-sample normalization's initial statistics."""
        if writer is None:  # a NetCDF file, on a process other than 0
            return
        parts = [((slice(None),) * 5, out)] if isinstance(out, np.ndarray) else parallel.write_owners(out)
        for index, data in parts:
            lead, member, rows = index[0], index[1], index[2]
            data = np.asarray(data)  # [l, b, h, W, C]
            b0 = member.start or 0
            count = max(0, min(data.shape[1], keep - b0))
            if count == 0:  # padding members only
                continue
            l0 = n0 + (lead.start or 0)
            leads = slice(l0, l0 + data.shape[0])
            physical = self.inputs.to_physical(data[:, :count], reference)
            if m0 is None:
                writer.write_deterministic(leads, physical[:, 0], rows=rows)
            else:
                writer.write_members(slice(m0 + b0, m0 + b0 + count), leads, physical, rows=rows)

    def _record(self, writer, fmt: str, **what) -> None:
        """Zarr: once every process has written, process 0 marks the member chunk / deterministic run complete."""
        if fmt != "zarr":
            return
        parallel.barrier("chunk written")
        if self.main:
            writer.record(**what)


def _ckpt_text(info: Optional[dict]) -> str:
    return "" if not info else f"{info['path']} step {info['step']} ({info['which']})"


def parse_inits(text: Optional[str], cycles: int, every_hours: float, default: str) -> list[np.datetime64]:
    """--init TIME (or a comma-separated list) and --cycles N --every H → the initial times."""
    raw = text or default
    if not raw:
        raise UserError("--init: give the initial time, e.g. --init=2024-06-13T00")
    out = []
    for item in str(raw).split(","):
        try:
            t0 = np.datetime64(item.strip(), "ns")
        except ValueError:
            raise UserError(f"--init: {item!r} is not a time such as 2024-06-13T00") from None
        step = np.timedelta64(int(round(every_hours * 3600)), "s").astype("timedelta64[ns]")
        out.extend(t0 + i * step for i in range(max(int(cycles), 1)))
    return out


def forecast(cfg: Any, workdir: Path, out_dir: Path, inits: list[np.datetime64], *, overwrite: bool = False,
             log: Callable = print) -> list[Path]:
    """Run every cycle in ``inits`` (skipping finished files unless ``overwrite``); return the files."""
    out_dir = Path(out_dir)
    log = parallel.reporting(log)
    # which cycles are finished, as process 0 sees them (the others may not see its files)
    fmt = str(cfg.ensemble.format)
    done = parallel.agree([not overwrite and (out_dir / forecast_filename(t, fmt)).exists() for t in inits])
    todo = [t for t, d in zip(inits, done) if not d]
    for t in inits:
        if t not in todo:
            log(f"{out_dir / forecast_filename(t, fmt)} exists: skipped (--overwrite redoes it)")
    if not todo:
        return [out_dir / forecast_filename(t, fmt) for t in inits]
    runner = Forecaster(cfg, workdir, log, inits=tuple(todo))
    sampler = f", sampler {cfg.sampler.name} S={cfg.sampler.steps}" if runner.ensemble.uses_denoiser else ""
    log(f"{runner.members} members (chunks of {runner.member_chunk} over {runner.mesh.shape[parallel.DATA]} "
        f"device(s)), {runner.steps} steps of {runner.dt:g} h (chunks of {runner.lead_chunk}); "
        f"{runner.ensemble.describe()}{sampler}")
    for t in todo:
        runner.run_cycle(t, out_dir)
    return [out_dir / forecast_filename(t, fmt) for t in inits]
