"""A trial's parameters and end committed by the writer thread while the next trial runs
(hpo/db/behind.py), on the real PostgreSQL: what the database holds once the writer is done,
what the worker and other processes see while an end is queued, the budget meanwhile, a
sweeper's FAIL found by the queued end, and a worker stopped with writes still queued.

The writer is held back by a gate the test controls (a job that waits on an event), never by
timing: while it waits, everything queued behind it is not yet written."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo.db import behind, budget
from hpo.db import optuna_private as oc
from hpo.db.held_writes import HeldWrites
from hpo.db.retry import finished_elsewhere
from hpo.db.storage import get_storage
from hpo.engine.loop import work

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _same(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    """Field by field, NaN equal to NaN."""
    return repr(sorted(vars(a).items())) == repr(sorted(vars(b).items()))


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 1e-6, 1e-2, log=True)
    c = trial.suggest_categorical("c", ["relu", "tanh"])
    trial.set_user_attr("curve", [0.5, 0.25])
    for step in range(3):
        trial.report(x * step, step)
    if trial.number == 1:
        raise optuna.TrialPruned()
    return x + (c == "relu")


class Gate:
    """Holds the writer of ``study`` back: every job queued after :meth:`close` waits until
    :meth:`open`."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.event = threading.Event()

    def close(self) -> None:
        oc.rdb_of(self.study)._wb_behind.submit(self.event.wait)

    def open(self) -> None:
        self.event.set()


def _storage(url: str) -> RDBStorage:
    return get_storage(url, heartbeat=True, create_schema=True)


def test_ends_written_behind_read_back_as_optuna_reads_them(pg_url: str) -> None:
    """Once the writer is done, each trial is stored exactly as the worker knew it from its
    ``tell`` on: values, state, end time, parameters, attributes, reports."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=2))
    with behind.overlapped(study, wait=30):
        assert oc.rdb_of(study)._wb_behind is not None
        study.optimize(_objective, n_trials=4)
        known = [study._storage.get_trial(oc.trial_id(t)) for t in study.trials]
        behind.settle(study)
    other = RDBStorage(pg_url)
    stored = [other.get_trial(oc.trial_id(t)) for t in known]
    assert [t.state for t in stored] == [TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.COMPLETE, TrialState.COMPLETE]
    for mine, theirs in zip(known, stored, strict=True):
        assert _same(mine, theirs), (mine, theirs)
        assert theirs.params and theirs.user_attrs["curve"] == [0.5, 0.25]
        assert sorted(theirs.intermediate_values) == [0, 1, 2]


def test_sqlite_keeps_its_ends_synchronous(tmp_path: Path) -> None:
    """No writer on SQLite (one writer at a time per file): an end is committed by ``tell``."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=_storage(url))
    with behind.overlapped(study, wait=30):
        assert oc.rdb_of(study)._wb_behind is None
        study.optimize(_objective, n_trials=1)
        assert RDBStorage(url).get_trial(oc.trial_id(study.trials[0])).state == \
            TrialState.COMPLETE


def test_a_queued_end_is_known_here_and_holds_its_slot_in_the_database(pg_url: str) -> None:
    """While a trial's end (and, once a trial has shown which parameters to expect, its
    parameters) are queued: this worker sees the trial COMPLETE (its ``get_trial``, the cache
    TPE and the pruners read); the database and other processes see it RUNNING, so it holds
    its slot of the budget and another worker's creation is refused. Then it commits."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0, 1) + trial.suggest_int("n", 1, 4)

    with behind.overlapped(study, wait=30):
        study.optimize(objective, n_trials=1)
        gate = Gate(study)
        gate.close()
        study.optimize(objective, n_trials=1)
        tid = oc.trial_id(study.trials[1])
        other = RDBStorage(pg_url)
        assert other.get_trial(tid).state == TrialState.RUNNING
        assert other.get_trial(tid).params == {}
        mine = study.get_trials(deepcopy=False)
        assert [t.state for t in mine] == [TrialState.COMPLETE] * 2 and mine[1].params
        assert _same(storage.get_trial(tid), mine[1])

        peer = optuna.load_study(study_name="s", storage=_storage(pg_url))
        with budget.budget(peer, 2), pytest.raises(budget.BudgetFull):
            peer.ask()
        gate.open()
        behind.settle(study)
    assert _same(other.get_trial(tid), mine[1])


def test_an_end_held_for_a_failing_creation_is_written_while_it_is_retried(pg_url: str) -> None:
    """A trial's end is held until the next trial's creation is done; a creation that fails
    is retried (five attempts, up to 2 s apart), and the end is queued at its first failure,
    not once it has given up: here the server refuses a creation, as a restarting server does
    (SQLSTATE 57P03), while the study has a RUNNING trial, so only that end lets it through."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=3))
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as con:
        con.execute("""
            CREATE FUNCTION refuse_while_running() RETURNS trigger AS $$
            BEGIN
              IF EXISTS (SELECT 1 FROM trials WHERE study_id = NEW.study_id
                         AND state = 'RUNNING') THEN
                RAISE EXCEPTION 'a trial of this study is still running'
                  USING ERRCODE = '57P03';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        con.execute("CREATE TRIGGER refuse BEFORE INSERT ON trials FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_while_running()")
    with behind.overlapped(study, wait=30):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        behind.settle(study)
    stored = RDBStorage(pg_url).get_all_trials(oc.study_id(study))
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 2

def test_a_sweepers_fail_is_found_by_the_queued_end_and_raised_at_the_next_creation(
        pg_url: str) -> None:
    """A sweeper fails the trial while its end is queued: the end writes nothing, the worker
    forgets what it knew and reads the FAIL, and the refusal is raised where a ``tell``'s
    would have been handled: at the next creation (nothing created)."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    with behind.overlapped(study, wait=30):
        gate = Gate(study)
        gate.close()
        study.optimize(_objective, n_trials=1)
        tid = oc.trial_id(study.trials[0])
        other = RDBStorage(pg_url)
        other.set_trial_state_values(tid, TrialState.FAIL)  # what a sweeper does
        gate.open()
        oc.rdb_of(study)._wb_behind.wait()
        with pytest.raises(Exception) as raised:
            study.optimize(_objective, n_trials=1)
        assert finished_elsewhere(raised.value), raised.value
        assert len(other.get_all_trials(study._study_id)) == 1
        behind.settle(study)  # raised once: nothing more
    assert storage.get_trial(tid).state == TrialState.FAIL
    assert other.get_trial(tid).values is None


def test_the_loop_carries_on_when_a_queued_end_is_refused(pg_url: str, capsys) -> None:
    """In the trial loop, that refusal is the usual one line, and the study still ends with
    exactly its budget of COMPLETE trials."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    other = RDBStorage(pg_url)
    gate: list[Gate] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:  # its end is queued behind a closed gate
            gate.append(Gate(study))
            gate[0].close()
        elif trial.number == 1:  # trial 0 is failed meanwhile, then its end is let through
            other.set_trial_state_values(oc.trial_id(study.trials[0]), TrialState.FAIL)
            gate[0].open()
        return x

    result = work(study, objective, n_trials=3)
    assert (result.finished, result.stopped_by) == (3, "budget")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 3
    assert TrialState.RUNNING not in states
    err = capsys.readouterr().err
    assert err.count("was failed by another process") == 1, err


def _loop_with_trial_0_failed_elsewhere(pg_url: str, capsys, then) -> str:
    """Run the loop (budget 3) where a sweeper fails trial 0 while it runs, and ``then(trial)``
    is the rest of trial 0's objective; the worker's stderr."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    other = RDBStorage(pg_url)

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 0:
            other.set_trial_state_values(oc.trial_id(trial), TrialState.FAIL)  # a sweeper
            then(trial)
        return trial.suggest_float("x", 0, 1)

    result = work(study, objective, n_trials=3)
    assert (result.finished, result.stopped_by) == (3, "budget")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 3, states
    assert TrialState.RUNNING not in states
    return capsys.readouterr().err


def test_a_trial_lost_to_an_outage_and_failed_elsewhere_is_said_once(pg_url: str,
                                                                      capsys) -> None:
    """Trial 0's objective meets a lost connection (a transient error: the loop says
    "storage unavailable" and goes on) while a sweeper fails the trial: its FAIL end, queued,
    is refused, and the loop says once that the trial was failed by another process (the
    worker cut off by the network, tests/test_faults.py)."""

    def lost(trial: optuna.Trial) -> None:
        raise sqlalchemy.exc.OperationalError(  # as SQLAlchemy wraps psycopg's own
            "SELECT 1", {}, psycopg.OperationalError("consuming input failed: server closed "
                                                     "the connection unexpectedly"))

    err = _loop_with_trial_0_failed_elsewhere(pg_url, capsys, lost)
    assert err.count("storage unavailable") == 1, err
    assert err.count("was failed by another process") == 1, err


def test_a_refusal_met_by_the_objective_and_by_the_queued_end_is_said_once(pg_url: str,
                                                                            capsys) -> None:
    """Trial 0's own parameter write is refused (the study's first parameter is written at
    once; the trial was failed elsewhere): the loop says so; the FAIL end queued after it is
    refused too (:class:`hpo.db.behind.EndRefused`, naming the trial) and is not said again."""

    def draw(trial: optuna.Trial) -> None:
        trial.suggest_float("x", 0, 1)

    err = _loop_with_trial_0_failed_elsewhere(pg_url, capsys, draw)
    assert err.count("was failed by another process") == 1, err
    assert "storage unavailable" not in err, err


def test_a_worker_stopped_with_writes_queued_leaves_them_written(pg_url: str,
                                                                 monkeypatch) -> None:
    """Ctrl-C in the trial after one whose end (and this trial's parameters) are still queued:
    the loop writes what is queued on its way out; nothing is left RUNNING."""
    storage = _storage(pg_url)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    gate: list[Gate] = []
    closing = behind.Behind.close

    def close(self, timeout=None):  # the loop's way out: only now is the gate opened
        gate[0].open()
        return closing(self, timeout)

    monkeypatch.setattr(behind.Behind, "close", close)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            gate.append(Gate(study))
            gate[0].close()
            return x
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work(study, objective, n_trials=5)
    trials = RDBStorage(pg_url).get_all_trials(study._study_id)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert all(t.params for t in trials)


def test_a_flush_that_fails_gives_its_writes_back() -> None:
    """What a failed flush took is held again, for the trial's end; newer writes win."""
    running = HeldWrites(None)
    running.params["x"] = (0.5, None)
    running.steps[1] = 0.1
    taken = running.take()
    assert not running.pending() and taken.params == {"x": (0.5, None)}
    running.steps[1] = 0.2  # reported again meanwhile
    running.give_back(taken)
    assert running.params == {"x": (0.5, None)} and running.steps == {1: 0.2}


def _stale(url: str, study: optuna.Study) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with parameters whose heartbeat is an hour old (its worker died)."""
    import sqlalchemy

    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.suggest_int("n", 1, 4)
    oc.record_heartbeat(study, trial)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE trial_heartbeats SET heartbeat = heartbeat - "
                             "interval '1 hour'")
    engine.dispose()
    return study._storage.get_trial(trial._trial_id)


def test_a_stale_trial_is_failed_and_requeued_in_one_transaction(pg_url: str) -> None:
    """The sweep fails a dead worker's trial in the transaction that queues its retry (the
    same transaction id on both rows): no moment in which the study holds a free slot that a
    fresh trial could take from the retry. The retry is Optuna's: same parameters, WAITING,
    ``failed_trial`` and ``retry_history``."""
    import sqlalchemy

    from hpo.db.storage import sweep_stale_trials

    study = optuna.create_study(storage=_storage(pg_url),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    dead = _stale(pg_url, study)
    sweep_stale_trials(study)
    other = RDBStorage(pg_url)
    failed, retry = other.get_all_trials(study._study_id)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == dead.params
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.system_attrs["retry_history"] == [dead.number]
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        xmins = {row[0] for row in conn.exec_driver_sql(
            "SELECT xmin::text FROM trials ORDER BY trial_id")}
    engine.dispose()
    assert len(xmins) == 1, xmins
    sweep_stale_trials(study)  # nothing stale any more: nothing more queued
    assert len(other.get_all_trials(study._study_id)) == 2


def test_a_trial_past_its_retries_is_only_failed(pg_url: str) -> None:
    storage = get_storage(pg_url, heartbeat=True, create_schema=True, max_retry=0)
    study = optuna.create_study(storage=storage)
    _stale(pg_url, study)
    from hpo.db.storage import sweep_stale_trials

    sweep_stale_trials(study)
    states = [t.state for t in RDBStorage(pg_url).get_all_trials(study._study_id)]
    assert states == [TrialState.FAIL]
