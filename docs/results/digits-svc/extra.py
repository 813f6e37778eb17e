"""The numbers and the zoomed figure of README.md that hpo compare's own files do not hold:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/results/digits-svc/extra.py

reads summary.json and the studies (runs/compare-digits-svc.db), prints per arm the final best
of each seed in validation images (of 360), the trial each seed first reached 355/360, the share
of all its trials at or above 0.98, the best trials' median C and gamma, and the test accuracy
of each study's best trial (retrained on the training split as in the search, scored once on
the 360 test images the search never saw), and redraws best_so_far.png (y axis
[0.96, 0.995]) as best_so_far_zoom.png."""

import json
import os
import sys

import numpy as np
import optuna
from sklearn.svm import SVC

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "specs"), os.path.join(HERE, "..", "..", "..")]
from svc_rbf import splits  # noqa: E402

from hpo.report.compare import best_so_far_figure, grid_from_summary  # noqa: E402

URL = "sqlite:///runs/compare-digits-svc.db"
optuna.logging.set_verbosity(optuna.logging.WARNING)
summary = json.load(open(os.path.join(HERE, "summary.json")))
(x_train, y_train), _, (x_test, y_test) = splits(0)
for arm, runs in summary["runs"].items():
    runs = sorted(runs, key=lambda r: r["seed"])
    finals = [round(r["best_so_far"][-1] * 360) for r in runs]
    first = [next((i + 1 for i, v in enumerate(r["best_so_far"]) if round(v * 360) >= 355),
                  None) for r in runs]
    values, tests, best = [], [], []  # every trial's value; per study: test acc, (C, gamma)
    for r in runs:
        study = optuna.load_study(study_name=r["name"], storage=URL)
        values += [t.value for t in study.trials if t.value is not None]
        p = study.best_trial.params
        best.append((p["C"], p["gamma"]))
        tests.append(SVC(C=p["C"], gamma=p["gamma"]).fit(x_train, y_train).score(x_test, y_test))
    print(f"{arm}: finals {finals}; first 355/360 at {first}; "
          f"share >= 0.98 {np.mean(np.asarray(values) >= 0.98):.3f}; test of best "
          f"{np.median(tests):.3f} "
          f"[{np.percentile(tests, 25):.3f}-{np.percentile(tests, 75):.3f}]; "
          f"best trial's median C {np.median([b[0] for b in best]):.3g}, "
          f"gamma {np.median([b[1] for b in best]):.3g}")
fig = best_so_far_figure(grid_from_summary(os.path.join(HERE, "summary.json")))
for ax in fig.axes:
    ax.set_ylim(0.96, 0.995)
fig.savefig(os.path.join(HERE, "best_so_far_zoom.png"))
