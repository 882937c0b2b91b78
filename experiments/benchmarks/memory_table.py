"""The memory table of docs/BENCHMARKS.md from experiments/benchmarks/memory.sh's JSON files.

    .venv/bin/python experiments/benchmarks/memory_table.py bench_output/memory

One row per run and model (GiB): static, activations, the attention transient, the estimate (static + activations
+ 2 × attention) and XLA:CPU's compiled figure, with XLA's attention (``*_xla.json``) and the chunked one
(``*_chunked.json``) side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODEL = {"forecaster": "G_φ", "diffusion": "ε_θ"}


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_output/memory")
    runs = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*_xla.json")},
                  key=lambda n: min(p.stat().st_mtime for p in folder.glob(f"{n}_*.json")))
    print("| run | model | grid | params | GFLOP/fwd | remat | static | activations, xla | activations, chunked "
          "| attention, xla | attention, chunked | estimate, xla | estimate, chunked | XLA:CPU, xla | XLA:CPU, chunked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in runs:
        reports = {}
        for impl in ("xla", "chunked"):
            path = folder / f"{name}_{impl}.json"
            if path.exists():
                reports[impl] = {r["model"]: r for r in json.loads(path.read_text())["reports"]}
        for model in ("forecaster", "diffusion"):
            x, c = reports.get("xla", {}).get(model), reports.get("chunked", {}).get(model)
            r = x or c
            if r is None:
                continue

            def cell(rep, key, bold=False):
                if rep is None:
                    return "–"
                text = f"{rep[key]:.2f}"
                return f"**{text}**" if bold else text
            print(f"| `{name}` | {MODEL[model]} | {r['grid'][0]}×{r['grid'][1]} | {r['parameters'] / 1e6:.1f} M | "
                  f"{r['gflops_per_forward']:.0f} | {'yes' if r['remat'] else 'no'} | "
                  f"{r['memory_static_gb']:.2f} | {cell(x, 'memory_activations_gb')} | "
                  f"{cell(c, 'memory_activations_gb')} | {cell(x, 'memory_attention_gb')} | "
                  f"{cell(c, 'memory_attention_gb')} | {cell(x, 'memory_estimate_gb', True)} | "
                  f"{cell(c, 'memory_estimate_gb', True)} | {cell(x, 'memory_xla_cpu_gb')} | "
                  f"{cell(c, 'memory_xla_cpu_gb')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
