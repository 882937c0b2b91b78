"""report.md: tables and sentences come from scores.csv; figures are linked relative to the workdir."""

import numpy as np
import pandas as pd

from configs.presets import get_config
from def_jax.report import write_report


def scores(tmp_path, storms_at_last_lead: bool = True):
    rows = []
    for lead in (1, 2, 3, 4):
        for system, rmse in (("def", 1.0 + 0.1 * lead), ("deterministic", 1.2 + 0.2 * lead),
                             ("persistence", 1.5 + 0.3 * lead)):
            rows.append((system, "t2m", None, lead, "rmse", None, None, rmse))
            rows.append((system, "t2m", None, lead, "mae" if system != "def" else "crps", None, None, 0.8 * rmse))
        rows.append(("def", "t2m", None, lead, "spread", None, None, 0.5))
        rows.append(("def", "t2m", None, lead, "ssr", None, None, 0.5))
        rows.append(("def", "z", 500.0, lead, "rmse", None, None, 10.0))
        for system, b in (("def", 0.01), ("deterministic", 0.03), ("persistence", 0.04), ("climatology", 0.02)):
            rows.append((system, "refc", None, lead, "brier", 35.0, None, b))
        storms = storms_at_last_lead or lead < 4
        rows.append(("def", "refc", None, lead, "observed_frequency", 35.0, None, 0.02 if storms else 0.0))
        rows.append(("def", "refc", None, lead, "bss", 35.0, None, 0.5 if storms else np.nan))
        rows.append(("deterministic", "refc", None, lead, "bss", 35.0, None, -0.5 if storms else np.nan))
    df = pd.DataFrame(rows, columns=["system", "variable", "level", "lead_hours", "score", "threshold", "window",
                                     "value"])
    (tmp_path / "evaluation").mkdir()
    df.to_csv(tmp_path / "evaluation" / "scores.csv", index=False)


def test_report_tables_and_findings(tmp_path):
    scores(tmp_path)
    (tmp_path / "plots").mkdir()
    fig = tmp_path / "plots" / "crps_t2m.png"
    fig.write_bytes(b"")
    path = write_report(tmp_path, get_config("demo"), [np.datetime64("2024-06-13T00")], [fig], minutes=1.5,
                        variables=("t2m", "z500", "refc"))
    text = path.read_text()
    assert "| 4 | 1.4 | 2 | 2.7 | 1.12 | 1.6 | 0.5 | 0.5 |" in text  # the t2m row at 4 h, from the CSV
    assert "**z500** (gpm)" in text  # units from the demo catalogue (hrrr_expanded: geopotential height)
    assert "| 4 | 0.02 | 0.01 | 0.03 | 0.04 | 0.02 | 0.5 | -0.5 |" in text  # observed frequency, Brier, BSS
    assert "t2m +30 %" in text  # RMSE 1.4 vs 2.0
    assert "under-dispersive" in text and "beats climatology" in text
    assert "covered 2 % of the points at 4 h" in text
    assert "![crps_t2m](plots/crps_t2m.png)" in text and "1.5 minutes" in text


def test_report_says_when_no_storm_was_observed(tmp_path):
    """No event at the last lead: the BSS is undefined (NaN in scores.csv); the report says so instead of a skill."""
    scores(tmp_path, storms_at_last_lead=False)
    path = write_report(tmp_path, get_config("demo"), [np.datetime64("2024-06-13T00")], [], minutes=1.5,
                        variables=("t2m", "refc"))
    text = path.read_text()
    assert "| 4 | 0 | 0.01 | 0.03 | 0.04 | 0.02 | – | – |" in text
    assert "no REFC ≥ 35 dBZ was observed at 4 h" in text and "Brier skill score of" not in text


def test_report_answers_first_whether_the_ensemble_beats_one_run_and_storms_are_reliable(tmp_path):
    """skill.csv's ratios (a channel the single run predicts exactly, ratio inf, is left out of the mean) and
    reliability.csv pooled over leads decide the two sentences at the top."""
    scores(tmp_path)
    skill = []
    for lead in (1, 2, 3, 4):
        skill += [("def", "t2m", None, lead, "crps_over_deterministic_mae", 0.8),
                  ("def", "t2m", None, lead, "rmse_over_deterministic_rmse", 0.9),
                  ("def", "q", 50.0, lead, "crps_over_deterministic_mae", np.inf)]
    pd.DataFrame(skill, columns=["system", "variable", "level", "lead_hours", "score", "value"]).to_csv(
        tmp_path / "evaluation" / "skill.csv", index=False)
    rel = []
    for lead in (1, 2):  # pooled over leads: counts add, frequencies weight by count
        rel += [("def", "refc", 35.0, lead, 0.0, 0.1, 0.05, 0.06, 250), ("def", "refc", 35.0, lead, 0.5, 0.6, 0.55,
                                                                          0.5, 25),
                ("def", "refc", 35.0, lead, 0.9, 1.0, 0.95, 0.4 + 0.2 * (lead - 1), 100)]
    pd.DataFrame(rel, columns=["system", "variable", "threshold", "lead_hours", "bin_lower", "bin_upper",
                               "forecast_probability", "observed_frequency", "count"]).to_csv(
        tmp_path / "evaluation" / "reliability.csv", index=False)
    text = write_report(tmp_path, get_config("demo"), [np.datetime64("2024-06-13T00")], [], minutes=1.0,
                        variables=("t2m",)).read_text()
    first = text.index("## First")
    assert first < text.index("## Results")
    assert "| 4 | 0.8 | 0.9 | 0.5 |" in text  # CRPS ratio (inf left out), RMSE ratio, geometric-mean SSR
    assert "**def** at 4 h: better than one run as a distribution (CRPS 20 % below" in text
    assert "| 0.9–1.0 | 0.95 | 0.5 | 200 |" in text and "| 0.5–0.6 | 0.55 | 0.5 | 50 |" in text
    assert "not reliable within ±0.1" in text and "largest |observed − forecast| 0.45; 1 bin(s)" in text
