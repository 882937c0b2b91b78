"""The study scripts' own logic (experiments/ensemble_study/run.py, experiments/heldsuarez/run.py), without running a
study: the commands each stage runs, the test cycles, and the Gaussian amplitude at DEF's spread."""

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def heldsuarez():
    spec = importlib.util.spec_from_file_location("heldsuarez_run", ROOT / "experiments" / "heldsuarez" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_matched_amplitude_interpolates_in_log_and_extrapolates_at_spread_proportional_to_amplitude(heldsuarez):
    scales = [0.25, 0.5, 1.0, 2.0]
    # a spread ∝ amplitude^p, equal to DEF's at 0.7: the log-log interpolation is exact
    for p in (1.0, 0.6):
        ratios = [(a / 0.7) ** p for a in scales]
        assert heldsuarez.matched_amplitude(scales, ratios) == pytest.approx(0.7, rel=1e-12)
    # every grid point spreads more than DEF: from the smallest amplitude down, spread ∝ amplitude
    assert heldsuarez.matched_amplitude(scales, [2.0, 4.0, 8.0, 16.0]) == pytest.approx(0.125)
    # every grid point spreads less: from the largest amplitude up
    assert heldsuarez.matched_amplitude(scales, [0.1, 0.2, 0.3, 0.5]) == pytest.approx(4.0)


def test_spread_ratio_is_the_geometric_mean_over_channels_and_leads(heldsuarez, tmp_path):
    def scores(path, spreads):
        rows = [{"system": "def", "score": "spread", "variable": v, "level": lev, "lead_hours": h, "value": s}
                for (v, lev, h), s in spreads.items()]
        rows.append({"system": "deterministic", "score": "rmse", "variable": "z", "level": 500.0, "lead_hours": 6,
                     "value": 9.0})
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    keys = [("z", 500.0, 6), ("z", 500.0, 12), ("sp", float("nan"), 6)]
    a = scores(tmp_path / "a.csv", dict(zip(keys, [2.0, 8.0, 3.0])))
    b = scores(tmp_path / "b.csv", dict(zip(keys, [1.0, 2.0, 1.0])))
    # ratios 2, 4 and 3 (surface pressure, whose level is empty, matched too): their geometric mean
    assert heldsuarez.spread_ratio(a, b) == pytest.approx((2.0 * 4.0 * 3.0) ** (1 / 3))
    with pytest.raises(SystemExit, match="no common spread"):
        heldsuarez.spread_ratio(a, scores(tmp_path / "c.csv", {("t", 850.0, 6): 1.0}))


def test_the_study_runs_commands_over_the_test_cycles(heldsuarez, tmp_path):
    """The Held–Suarez plan's test cycles (21 ten-day cycles 204 h apart from 2001-07-01T00), the forecast and
    evaluate commands every stage builds, and the last stage the plan runs before the tables."""
    study, plan = heldsuarez.study, heldsuarez.PLAN
    run = study.StudyRun(plan, tmp_path, [f"--config={plan.config}:{tmp_path}"], [0, 1, 2], plan.every, 2)
    inits, first = run.test_cycles()
    assert len(inits) == 21 and first == "2001-07-01T00"
    args, logfile = run.forecast_job(tmp_path / "s0", 0, ["--config.ensemble.perturbation=gaussian"],
                                     tmp_path / "s0" / "g", "s0_g")
    assert args[1] == "forecast" and logfile == tmp_path / "logs" / "forecast_s0_g.log"
    assert {"--init=2001-07-01T00", "--cycles=21", "--every=204", "--config.seed=0",
            f"--out={tmp_path / 's0' / 'g' / 'forecasts'}", "--config.ensemble.perturbation=gaussian"} <= set(args)
    args, _ = run.evaluate_job(tmp_path / "s0" / "g", "s0_g")
    assert args[1] == "evaluate" and args[-2:] == [f"--forecasts={tmp_path / 's0' / 'g' / 'forecasts'}",
                                                    f"--out={tmp_path / 's0' / 'g' / 'evaluation'}"]
    assert "--config.evaluation.channels=('z500','t850','u250','v500','sp')" in args
    (tmp_path / "s0" / "g" / "evaluation").mkdir(parents=True)
    (tmp_path / "s0" / "g" / "evaluation" / "scores.csv").write_text("")
    assert run.evaluate_job(tmp_path / "s0" / "g", "s0_g") is None  # scored: not again
    assert plan.last_stage is heldsuarez.matched_gaussian
