"""What a study's value is: the metric's name and the study's direction.

A study of the book's MLP (no ``[objective]`` table in its spec) maximizes the final validation
accuracy, ``val_acc`` (:data:`hpo.db.storage.METRIC_NAME`); a user's objective names its metric
and direction in ``[objective]`` (``metric = "loss"``, ``direction = "minimize"``). The listing,
report.html and the comparison table name the metric from here and rank in its direction
(:func:`hpo.samplers.ranking.best_first`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo.catalog import DEFAULT_DIRECTION, DEFAULT_METRIC
from hpo.db.storage import METRIC_NAME

__all__ = ["BOOK", "METRIC_LABELS", "Metric", "metric_of"]

#: How text names a metric: the book's ``val acc`` (``Best-1(val acc:0.86)``); others as named.
METRIC_LABELS = {METRIC_NAME: "val acc"}


@dataclass(frozen=True)
class Metric:
    """What a study's value is: its name and the study's direction. The book's MLP (no
    ``[objective]`` in the spec): ``val_acc``, maximized, shown to 2 decimals as the book does;
    a user's objective: the ``metric`` and ``direction`` of its ``[objective]`` table."""

    name: str = METRIC_NAME
    direction: str = DEFAULT_DIRECTION

    @property
    def book(self) -> bool:
        """The book's validation accuracy (its train accuracy, gap and curves apply)."""
        return self.name == METRIC_NAME

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.name, self.name)

    @property
    def words(self) -> str:
        """The metric in a sentence: ``validation accuracy``, else its name."""
        return "validation accuracy" if self.book else self.name

    @property
    def order(self) -> str:
        """How rows are ranked, in words: ``highest first`` or ``lowest first``."""
        return "highest first" if self.direction == "maximize" else "lowest first"

    def fmt(self, value: float) -> str:
        """A value as text: the book's accuracy to 2 decimals (``0.86``), another metric to 4
        significant digits (``0.1235``)."""
        return f"{value:.2f}" if self.book else f"{float(value):.4g}"


def metric_of(spec: Mapping[str, Any] | None, direction: Any = None) -> Metric:
    """The :class:`Metric` of a study from its spec (as a dict, ``hpo:spec``): its ``[objective]``
    table's ``metric`` and ``direction``, else the book's. ``direction`` (the study's own, an
    Optuna ``StudyDirection`` or its name) wins over the spec's when given."""
    objective = (spec or {}).get("objective") or {}
    name = objective.get("metric") or (DEFAULT_METRIC if objective else METRIC_NAME)
    chosen = objective.get("direction") or DEFAULT_DIRECTION
    if direction is not None:
        chosen = getattr(direction, "name", str(direction)).lower()
    return Metric(str(name), chosen)


BOOK = Metric()
