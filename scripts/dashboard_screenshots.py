"""Screenshots of a study in optuna-dashboard, as served by `hpo dashboard`: the report's cards
cut out of the study page, and the best trial's page.

    .venv/bin/hpo run studies/book-random.toml && .venv/bin/hpo report book-random
    .venv/bin/python scripts/dashboard_screenshots.py --study book-random --out docs/dashboard

writes ``<out>/<prefix>-best-curves.png`` (and ``-contour``, ``-acc-vs-params``, ``-stages``)
and ``<out>/<prefix>-trial.png``. ``--plain`` serves optuna-dashboard without hpo's page
stylesheet (how a trial page looked before it). Needs headless Chromium (tests/browser.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import browser  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("HPO_STORAGE", "sqlite:///hpo.db"))
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", default="docs/dashboard")
    parser.add_argument("--prefix", default="after")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--plain", action="store_true",
                        help="serve optuna-dashboard without hpo's page stylesheet")
    args = parser.parse_args()
    chromium = browser.find_chromium()
    if chromium is None:
        print(f"no Chromium: {browser.HINT}", file=sys.stderr)
        return 1
    import optuna

    from hpo.report import dashboard

    study = optuna.load_study(study_name=args.study, storage=args.storage)
    study_id = optuna.storages.RDBStorage(args.storage).get_study_id_from_name(args.study)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plain:
        dashboard.with_page_css = lambda app, extra=b"": app  # optuna-dashboard by itself
    with tempfile.TemporaryDirectory() as tmp, browser.dashboard(args.storage) as base:
        tmp_path = Path(tmp)
        page = f"{base}/dashboard/studies/{study_id}"
        cards = browser.probe(chromium, tmp_path / "p1", page, args.width)["cards"]
        shot = browser.screenshot(chromium, tmp_path / "p2", page, tmp_path / "s.png",
                                  args.width)
        for name, card in cards.items():
            path = out / f"{args.prefix}-{name.removeprefix('hpo-')}.png"
            browser.crop(shot, card["box"], path)
            print(f"wrote {path} ({', '.join(browser.outside(card)[:3]) or 'all inside'})",
                  file=sys.stderr)
        trial = out / f"{args.prefix}-trial.png"
        browser.screenshot(chromium, tmp_path / "p3",
                           f"{page}/trials?numbers={study.best_trial.number}", trial, 1000, 900)
        print(f"wrote {trial}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
