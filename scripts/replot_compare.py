"""Redraw a comparison's best-so-far plot from its summary.json, without its studies.

    .venv/bin/python scripts/replot_compare.py docs/results/samplers --workers 2

``hpo compare`` draws ``best_so_far.png`` itself; this is for a comparison whose plot should be
drawn again (a new plot style) when its studies are gone or too slow to read: the curves in
``summary.json`` are all the plot needs.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hpo.report.compare import grid_from_summary, plot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the comparison's --out directory (holds summary.json)")
    parser.add_argument("--workers", type=int,
                        help="worker processes per study, for the time axis label (summary.json "
                             "files written before hpo recorded it)")
    args = parser.parse_args()
    grid = grid_from_summary(os.path.join(args.out, "summary.json"))
    if args.workers:
        grid.workers = args.workers
    path = os.path.join(args.out, "best_so_far.png")
    plot(grid, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
