"""The trial loop and its budget (hpo/engine/loop.py): exact counts and claims, stale trials and
WAITING retries, and the storage round trips the loop makes per trial.

The storages here are real (SQLite files, and the in-memory storage for the fallback path); calls
are counted by wrapping methods of the RDBStorage instance, nothing is mocked.
"""

from __future__ import annotations

import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from hpo.db.storage import get_storage, state_counts
from hpo.engine.loop import (
    CLOSED_ATTR,
    HANDED_BACK_ATTR,
    Surplus,
    _claim,
    count_states,
    hand_back,
    work,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_float("y", 0.0, 1.0)


def counted(storage: optuna.storages.RDBStorage, *names: str) -> Counter:
    """Count calls of the given methods of ``storage`` (an RDBStorage instance)."""
    calls: Counter = Counter()
    for name in names:
        method = getattr(storage, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(storage, name, wrapper)
    return calls


def sql_counter(storage: optuna.storages.RDBStorage) -> list[str]:
    """Every SQL statement run on the storage's engine from now on."""
    from sqlalchemy import event

    statements: list[str] = []

    @event.listens_for(storage.engine, "before_cursor_execute")
    def _log(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ARG001
        statements.append(statement)

    return statements


def make_study(url: str, **storage_kw) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = get_storage(url, heartbeat=True, create_schema=True, **storage_kw)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    return study, storage


def test_worker_loop_reads_no_trials_per_trial(sqlite_url):
    """Per trial: no ``get_trials`` read at all (the counts are one SQL query each, the claim
    needs none below the budget, ``ask`` skips its WAITING lookup after a count of zero) and,
    one worker having no RUNNING trial at each count, no stale-trial query either."""
    n = 8
    study, storage = make_study(sqlite_url)
    calls = counted(storage, "_get_trials", "_get_stale_trial_ids", "get_trial")
    statements = sql_counter(storage)
    result = work(study, objective, n_trials=n)
    assert (result.trials_run, result.finished, result.stopped_by) == (n, n, "budget")
    assert calls["_get_trials"] == 0, calls
    assert calls["_get_stale_trial_ids"] == 0, calls
    assert calls["get_trial"] == 2 * n, calls  # Optuna's: the new Trial, and tell
    counts = [s for s in statements if "GROUP BY state" in s]
    assert len(counts) == n + 1  # one before each trial, one to see the budget met
    assert not any("number <" in s for s in counts)  # no claim query below the budget
    assert Counter(t.state for t in study.trials) == {TrialState.COMPLETE: n}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_state_counts_match_the_trials(where, sqlite_url):
    if where == "sqlite":
        study, _ = make_study(sqlite_url)
    else:
        study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=3)
    study.optimize(lambda t: 1 / 0, n_trials=1, catch=(ZeroDivisionError,))
    study.enqueue_trial({"x": 0.5, "y": 0.5})
    study.ask()  # pops the WAITING trial: RUNNING
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    study.enqueue_trial({"x": 0.1, "y": 0.1})  # WAITING
    expected = Counter(t.state for t in study.trials)
    assert set(expected) == set(TrialState)
    assert state_counts(study) == expected
    assert state_counts(study, below=4) == Counter(t.state for t in study.trials[:4])
    assert count_states(study) == (4, 2, 1)  # (COMPLETE + PRUNED, RUNNING + WAITING, WAITING)


@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_claim_counts_finished_and_in_flight_predecessors(where, sqlite_url):
    if where == "sqlite":
        study, storage = make_study(sqlite_url)
    else:
        study = optuna.create_study(direction="maximize")
        storage = study._storage
    n = 3
    study.optimize(objective, n_trials=2)
    study.optimize(lambda t: 1 / 0, n_trials=1, catch=(ZeroDivisionError,))  # trial 2: FAIL
    other = storage.create_new_trial(study._study_id)  # trial 3: another worker's, RUNNING
    early = optuna.Trial(study, storage.create_new_trial(study._study_id))  # trial 4
    with pytest.raises(Surplus):  # 2 COMPLETE + 1 RUNNING precede it: the budget is full
        _claim(study, early, n)
    assert storage.get_trial_system_attrs(early._trial_id)["hpo:surplus"] is True
    storage.set_trial_state_values(early._trial_id, TrialState.FAIL)
    storage.set_trial_state_values(other, TrialState.FAIL)  # that worker died
    late = optuna.Trial(study, storage.create_new_trial(study._study_id))  # trial 5
    _claim(study, late, n)  # only the 2 COMPLETE ones count now: it fits
    assert "hpo:surplus" not in storage.get_trial_system_attrs(late._trial_id)


def test_a_waiting_trial_is_run_first(sqlite_url):
    study, _ = make_study(sqlite_url)
    study.optimize(objective, n_trials=1)
    study.enqueue_trial({"x": 0.25, "y": 0.5})
    work(study, objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.trials[1].params == {"x": 0.25, "y": 0.5}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_trials_holding_the_quota_are_failed_and_retried(sqlite_url):
    """The loop fails stale trials itself when in-flight trials fill the quota (optimize would
    not run: there is no slot), and runs the retry the heartbeat callback enqueues."""
    study, storage = make_study(sqlite_url, heartbeat_interval=1, grace_period=2)
    dead = study.ask()  # a worker that died mid-trial
    dead.suggest_float("x", 0.0, 1.0)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)  # past the grace period
    result = work(study, objective, n_trials=1, poll=0.1)
    assert (result.finished, result.stopped_by) == (1, "budget")
    first, retry = study.trials
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == first.number
    assert retry.params["x"] == first.params["x"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_stale_trial_below_the_quota_is_failed_before_the_next_trial(sqlite_url):
    """With a RUNNING trial in the count, optimize's own stale check runs (it is skipped only
    when the count saw no RUNNING trial): the dead worker's trial is failed before this
    worker's next trial, and its retry runs."""
    study, storage = make_study(sqlite_url, heartbeat_interval=1, grace_period=2)
    dead = study.ask()
    dead.suggest_float("x", 0.0, 1.0)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    result = work(study, objective, n_trials=3, poll=0.1)
    assert (result.finished, result.stopped_by) == (3, "budget")
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 3
    assert any(t.system_attrs.get("failed_trial") == 0 for t in study.trials)


@pytest.mark.parametrize("where", ["sqlite_url", "pg_url"])
def test_a_trial_that_never_beat_does_not_hold_the_quota_forever(where, request):
    """A trial whose worker lost the database before its first heartbeat (and then its tell) has
    no heartbeat row, and Optuna never counts it stale: past the grace period the loop fails it
    and runs its retry instead of waiting for it forever."""
    url = request.getfixturevalue(where)
    study, storage = make_study(url, heartbeat_interval=1, grace_period=2)
    orphan = study.ask()  # ask() starts no heartbeat thread: no row, as after a failed first beat
    orphan.suggest_float("x", 0.0, 1.0)
    assert storage._get_stale_trial_ids(study._study_id) == []  # invisible to Optuna
    time.sleep(2.5)
    result = work(study, objective, n_trials=1, poll=0.1, timeout=20)
    assert (result.finished, result.stopped_by) == (1, "budget")
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == first.number


def test_a_young_trial_without_heartbeat_is_left_alone(sqlite_url):
    study, _ = make_study(sqlite_url, heartbeat_interval=1, grace_period=30)
    young = study.ask()
    result = work(study, objective, n_trials=1, poll=0.1, timeout=1.5)
    assert result.stopped_by == "timeout"
    assert study.trials[young.number].state == TrialState.RUNNING and len(study.trials) == 1


def test_a_trial_failed_by_a_sweeper_while_it_ran_does_not_stop_the_worker(sqlite_url, capsys):
    """A sweeper that took this worker for dead fails its trial mid-run (a long outage, a paused
    machine); the tell is refused. The worker says so in one line and goes on to the budget."""
    study, storage = make_study(sqlite_url)
    swept = []

    def objective_swept_once(trial: optuna.Trial) -> float:
        value = objective(trial)
        if not swept:  # another process fails this trial while it runs
            swept.append(trial.number)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return value

    result = work(study, objective_swept_once, n_trials=3)
    assert (result.finished, result.stopped_by) == (3, "budget")
    states = Counter(t.state for t in study.trials)
    assert states == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}, states
    err = capsys.readouterr().err
    assert err.count("was failed by another process") == 1 and "Traceback" not in err, err


def test_routine_failures_are_not_logged_but_a_broken_objective_is(sqlite_url, caplog):
    """Optuna logs a failed trial with its traceback, then its value. A stop (SIGTERM, Ctrl-C)
    or a surplus claim is routine (the command says it in one line): neither record is kept.
    A bug in the objective is logged as Optuna logs it."""
    import logging

    from hpo.db import optuna_private as oc
    from hpo.errors import Terminated

    study, _ = make_study(sqlite_url)

    def stopped(trial: optuna.Trial) -> float:
        raise Terminated()

    def broken(trial: optuna.Trial) -> float:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.WARNING, logger=oc.OPTIMIZE_LOGGER):
        with pytest.raises(Terminated):
            study.optimize(stopped, n_trials=1)
        study.optimize(lambda t: (_ for _ in ()).throw(Surplus("beyond")), n_trials=1,
                       catch=(Surplus,))
        assert [r for r in caplog.records if r.name == oc.OPTIMIZE_LOGGER] == []
        study.optimize(broken, n_trials=1, catch=(RuntimeError,))
    logged = [r.getMessage() for r in caplog.records if r.name == oc.OPTIMIZE_LOGGER]
    assert len(logged) == 2 and "a bug" in logged[0] and "failed with value" in logged[1]
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3


def test_a_retry_left_waiting_when_the_budget_fills_is_closed(sqlite_url):
    """The interleaving that ended a restarted study at COMPLETE 20, FAIL 2, WAITING 1: a
    worker fails a stale trial (its retry is enqueued WAITING) while another worker's trial
    fills the last slot. The retry is needed no more, and nobody would ever run it: the worker
    that sees the budget met closes it (FAIL, ``hpo:closed``)."""
    study, storage = make_study(sqlite_url)
    work(study, objective, n_trials=1)
    last = study.ask()  # another worker's trial, about to fill the last slot
    last.suggest_float("x", 0.0, 1.0)
    study.enqueue_trial({"x": 0.5, "y": 0.5})  # the retry of a trial a sweeper just failed
    study.tell(last, 1.0)
    result = work(study, objective, n_trials=2)
    assert (result.trials_run, result.finished, result.stopped_by) == (0, 2, "budget")
    states = Counter(t.state for t in study.trials)
    assert states == {TrialState.COMPLETE: 2, TrialState.FAIL: 1}, states
    closed = study.trials[-1]
    assert closed.state == TrialState.FAIL and CLOSED_ATTR in closed.system_attrs


def test_a_worker_capped_by_max_runs_counts_only_trials_that_fit(sqlite_url):
    """``max_runs`` (a worker's --n-trials) caps the trials this worker runs; a surplus claim
    ran nothing and does not count."""
    study, _ = make_study(sqlite_url)
    result = work(study, objective, n_trials=10, max_runs=3)
    assert (result.trials_run, result.finished, result.stopped_by) == (3, 3, "n_trials")
    assert len(study.trials) == 3


def test_a_handed_back_trial_is_requeued_with_its_params(sqlite_url):
    """A worker whose parent died hands its trial back: a WAITING retry with the same params
    (run first by the next worker), the trial itself marked with the reason."""
    study, _ = make_study(sqlite_url)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_float("y", 0.0, 1.0)
    hand_back(study, trial)
    study.tell(trial, state=TrialState.FAIL)  # what Optuna does as the worker stops
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.system_attrs[HANDED_BACK_ATTR]
    assert retry.state == TrialState.WAITING and retry.params == first.params
    assert retry.system_attrs["failed_trial"] == first.number
    assert HANDED_BACK_ATTR not in retry.system_attrs
    work(study, objective, n_trials=1)
    assert study.trials[1].state == TrialState.COMPLETE and len(study.trials) == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_sigterm_while_a_trial_waits_for_its_stage_stops_it_at_once(sqlite_url):
    """A stage-1 trial waits (in ``ask``, where raising would leave it RUNNING) for another
    worker's stage-0 trial, up to ``wait_timeout``. A SIGTERM ends the wait at once and the loop
    fails the trial right after: it waited 60 s (600 s by default) before."""
    import os
    import signal
    import threading

    from hpo import signals
    from hpo.errors import Terminated
    from hpo.samplers import NarrowingSampler

    wait = 60.0
    storage = get_storage(sqlite_url, heartbeat=True, create_schema=True)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                sampler=NarrowingSampler(stage_trials=1, keep_top=1, seed=0,
                                                         poll_interval=0.05, wait_timeout=wait))
    other = optuna.load_study(study_name="s", storage=get_storage(sqlite_url),
                              sampler=optuna.samplers.RandomSampler(seed=1))
    stage0 = other.ask()  # another worker's stage-0 trial, still running
    stage0.suggest_float("x", 0.0, 1.0)

    def stop_once_waiting() -> None:  # the gate: trial 1 exists, i.e. it is waiting
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if len(study.get_trials(deepcopy=False)) >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signals.install_signal_handlers()
    try:
        thread = threading.Thread(target=stop_once_waiting)
        thread.start()
        start = time.monotonic()
        with pytest.raises(Terminated):
            work(study, objective, n_trials=2)
        elapsed = time.monotonic() - start
        thread.join()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        signals._STOP.signum = None
    assert elapsed < wait, elapsed  # stopped in the wait, not after it
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.RUNNING, TrialState.FAIL], states  # trial 0 is the other's
