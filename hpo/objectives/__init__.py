"""The objectives wing: what turns a trial into a value and its records.

An objective is what an Optuna user already has, a callable ``objective(trial) -> float``;
hpo's engine runs whichever :func:`make_objective` returns for a spec. The book's MLP
(:mod:`hpo.objectives.book`) is the built-in one: a spec without an ``[objective]`` table.
A spec with one names the user's own function (:mod:`hpo.objectives.user`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from hpo.objectives.book import Objective
from hpo.objectives.user import UserObjective, load_function
from hpo.spec import Spec


def make_objective(spec: Spec, *, data: Any = None, data_dir: str | None = None,
                   code_dirs: Sequence[str] | None = None, max_failures: int | None = None,
                   debug: bool = False) -> Callable[..., float]:
    """The objective of ``spec``, ready before anything is written (an error here is exit 2).

    The book's MLP (no ``[objective]``): loads the spec's data now (``data``: a split loaded
    already, shared by the cells of a comparison; ``data_dir``: where a dataset lives).

    A user's function (``[objective]``): found and loaded now, only inside the allowed folders:
    ``code_dirs`` when given (a worker that read the spec from its study: ``--code-dir`` /
    ``$HPO_CODE_DIR``, :func:`hpo.objectives.user.code_dirs_from`), else the folder of the
    spec file given on the command line; neither: exit 2 saying how to allow one.
    ``max_failures``: consecutive failed trials before the worker stops (``--max-failures``;
    default the spec's, else 3); ``debug``: each failed trial's traceback on stderr too.
    ``data`` and ``data_dir`` do not apply to it."""
    if spec.objective is not None:
        if data_dir:
            logging.getLogger("hpo").warning(
                "warning: --data-dir %s is not used: a spec's own objective reads its own data",
                data_dir)

        fn = load_function(spec, "function", code_dirs)
        test = load_function(spec, "test", code_dirs) if spec.objective.test else None
        return UserObjective(spec, fn, max_failures=max_failures, debug=debug, test_fn=test)
    return Objective(spec.with_data_dir(data_dir) if data_dir else spec, data=data)
