"""What every ``def-jax`` subcommand module shares: the :class:`Command` record, the :class:`Invocation` a command's
``run`` receives, and the small helpers their flags have in common (``--out``, ``--grid``, the multi-host start).

``cli.py`` lists the commands and parses the command line; ``cli_data``, ``cli_train``, ``cli_forecast`` and
``cli_bench`` define each command's flags and run it. They all import from here, never from ``cli.py``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Optional

from absl import flags

from def_jax.errors import UserError

PROG = "def-jax"


@dataclasses.dataclass
class Invocation:
    """What a command's ``run`` receives: the validated config, the workdir and its own flags."""

    config: object
    workdir: Path
    flags: flags.FlagValues
    args: list[str]  # positional arguments (e.g. the bench target)


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``define`` adds its flags to a fresh FlagValues, ``run`` runs it and returns the exit code."""

    name: str
    summary: str
    define: Callable[[flags.FlagValues], None]
    run: Callable[[Invocation], int]
    positional: tuple[str, ...] = ()  # accepted positional arguments (e.g. bench targets)
    default_workdir: str = ""  # "" = runs/<preset>
    compile_cache: bool = True  # use the persistent compilation cache (off for benchmarks: they time compiles)


def no_flags(fv: flags.FlagValues) -> None:
    """The ``define`` of a command with no flags of its own: everything is in the config (``--config.FIELD=...``)."""


def output_path(inv: Invocation, default: str) -> Path:
    """``--out`` if given, else ``WORKDIR/default``."""
    return Path(inv.flags.out) if inv.flags.out else inv.workdir / default


def parse_grid(text: Optional[str], default, example: str) -> tuple[int, int]:
    """``--grid=HEIGHTxWIDTH`` (also ``H×W``, ``H,W``) → (height, width); ``default`` (a pair) when not given."""
    if text is None:
        return int(default[0]), int(default[1])
    m = re.fullmatch(r"\s*(\d+)\s*[xX×,]\s*(\d+)\s*", text)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise UserError(f"--grid: expected HEIGHTxWIDTH such as {example}; got {text!r}")
    return int(m[1]), int(m[2])


def start_processes(cfg) -> bool:
    """jax.distributed for a multi-host run (config.parallel or a SLURM/Open MPI launch), before any JAX work;
    whether this is process 0, the one that reports."""
    from def_jax import parallel  # imports JAX: only commands that compute pay for it

    p = cfg.parallel
    launch = parallel.initialize_distributed(p.coordinator_address, p.num_processes, p.process_id)
    return launch is None or launch.process_id == 0
