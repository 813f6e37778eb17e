"""The objectives wing: what turns a trial into a value and its records.

An objective is what an Optuna user already has, a callable ``objective(trial) -> float``;
hpo's engine runs whichever :func:`make_objective` returns for a spec. The book's MLP
(:mod:`hpo.objectives.book`) is the built-in one: a spec without an ``[objective]`` table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpo.spec import Spec


def make_objective(spec: Spec, *, data: Any = None, data_dir: str | None = None
                   ) -> Callable[..., float]:
    """The objective of ``spec``: the book's MLP on the spec's data (``data``: a split loaded
    already, shared by the cells of a comparison; ``data_dir``: where a dataset lives). Loads
    the data now, so a data error stops the caller before anything is written."""
    from hpo.objectives.book import Objective  # numpy and the model: only when one is made

    return Objective(spec.with_data_dir(data_dir) if data_dir else spec, data=data)
