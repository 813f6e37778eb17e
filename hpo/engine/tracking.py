"""Trials logged to MLflow (the optional extra ``mlflow``): one MLflow run per finished trial.

Asked for by the spec (``[tracking] mlflow = "file:./mlruns"``) or by ``--mlflow-uri URI`` on
``hpo run`` / ``hpo worker`` (the flag wins). The study is an MLflow experiment of the same
name; each finished trial is a run named ``trial-<N>`` with the trial's params, its value as the
metric ``val_acc`` (and ``train_acc``), its state as the run's status (COMPLETE: FINISHED,
PRUNED: KILLED, FAIL: FAILED) and the tags ``optuna.study``, ``optuna.trial``,
``optuna.state`` and ``hpo.worker``. Every worker logs the trials it ran.

The Optuna storage stays the record of the study: an MLflow store that fails while the study
runs is one warning per failure, and the trials go on. A file store (``file:`` URI or a plain
folder) is what MLflow 3 keeps "in maintenance mode" and refuses unless
``MLFLOW_ALLOW_FILE_STORE=true``: hpo sets that for a file store it was asked to use. A file
store has no unique names: two workers starting together would each make an experiment named
after the study, so hpo makes it under a lock file in the store's folder (``.hpo.lock``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hpo.errors import UsageError, one_line
from hpo.logs import worker_id

__all__ = ["MlflowCallback", "mlflow_callback"]

log = logging.getLogger("hpo.tracking")

#: The MLflow run status of each finished Optuna state.
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri and ":" not in uri.split("/")[0]


class MlflowCallback:
    """An Optuna callback: one MLflow run per finished trial, in the experiment named after
    the study. Made before any trial runs (:func:`mlflow_callback`), so that a missing extra
    or an unusable URI stops the command before anything is written."""

    def __init__(self, uri: str, study_name: str, *, who: str = "") -> None:
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UsageError("MLflow tracking needs mlflow, which is not installed: pip install "
                             "mlflow-skinny (hpo's extra [mlflow])") from None
        if _is_file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.study_name = study_name
        self.who = who
        _quiet_mlflow()
        try:  # an unknown scheme fails here; an unreachable server later, per trial (a warning)
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # noqa: BLE001 - MLflow's own exceptions, by URI kind
            raise UsageError(f"MLflow tracking URI {uri!r} cannot be used: "
                             f"{one_line(e)}") from None
        self._experiment: str | None = None

    def experiment_id(self) -> str:
        """The experiment named after the study, made by the first worker that needs it."""
        if self._experiment is None:
            with self._one_maker():
                found = self.client.get_experiment_by_name(self.study_name)
                if found is None:
                    try:
                        self._experiment = self.client.create_experiment(self.study_name)
                    except Exception:  # noqa: BLE001 - another worker made it first: use it
                        found = self.client.get_experiment_by_name(self.study_name)
                        if found is None:
                            raise
                        self._experiment = found.experiment_id
                else:
                    self._experiment = found.experiment_id
        return self._experiment

    @contextmanager
    def _one_maker(self) -> Iterator[None]:
        """For a file store, one process at a time looks for the experiment and makes it (its
        names are not unique; a database or a server's names are, and need no lock)."""
        if not _is_file_store(self.uri):
            yield
            return
        from mlflow.utils.file_utils import local_file_uri_to_path

        root = local_file_uri_to_path(self.uri)
        os.makedirs(root, exist_ok=True)
        fd = os.open(os.path.join(root, ".hpo.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few file reads and one mkdir
            yield
        finally:
            os.close(fd)  # closing the file releases the lock

    def __call__(self, study: Any, trial: Any) -> None:
        try:
            self.log(trial)
        except Exception as e:  # noqa: BLE001 - the study goes on; MLflow is a copy of it
            log.warning("warning: trial %d was not logged to MLflow (%s): %s; the study goes on",
                        trial.number, self.uri, one_line(e))

    def log(self, trial: Any) -> str:
        """Log one finished trial as an MLflow run; its run id."""
        from mlflow.entities import Metric, Param, RunTag

        state = trial.state.name
        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number),
                "optuna.state": state, "hpo.worker": self.who or worker_id()}
        start = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        end = trial.datetime_complete.timestamp() if trial.datetime_complete else time.time()
        run = self.client.create_run(self.experiment_id(), start_time=int(start * 1000),
                                     tags=tags, run_name=f"trial-{trial.number}")
        run_id = run.info.run_id
        now = int(end * 1000)
        metrics = []
        if trial.value is not None:
            metrics.append(Metric("val_acc", float(trial.value), now, 0))
        train = trial.user_attrs.get("train_acc")
        if isinstance(train, (int, float)):
            metrics.append(Metric("train_acc", float(train), now, 0))
        self.client.log_batch(run_id, metrics=metrics,
                              params=[Param(k, str(v)) for k, v in trial.params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, STATUS.get(state, "FAILED"), end_time=now)
        return run_id


def _quiet_mlflow() -> None:
    """MLflow's own log lines ("Creating initial MLflow database tables...") through hpo's
    handler (JSON with ``--log-format json``), warnings and above only."""
    logger = logging.getLogger("mlflow")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.propagate = True
    logger.setLevel(max(logging.WARNING, logging.getLogger("hpo").getEffectiveLevel()))


def mlflow_callback(flag_uri: str | None, spec_uri: str | None, study_name: str
                    ) -> MlflowCallback | None:
    """The MLflow callback of ``--mlflow-uri`` (else the spec's ``[tracking] mlflow``), or
    None when neither asks for one."""
    uri = flag_uri or spec_uri
    if not uri:
        return None
    return MlflowCallback(uri, study_name)
