"""Progress bars for long loops: tqdm on a terminal, a line every 30 s when output goes to a file or a pipe."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A tqdm bar; off when ``enabled`` is False or there is nothing to do."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total == 0,
                mininterval=0.2 if interactive else 30.0, ascii=not interactive, dynamic_ncols=interactive)
