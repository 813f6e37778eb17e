"""What hpo relies on in Optuna's private names (hpo/db/optuna_private.py), pinned.

If a new Optuna release moves one of them, these tests fail, and hpo.db.optuna_private is the one
place to mend."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage, RDBStorage
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db.retry import finished_elsewhere, reason
from hpo.db.writebehind import WriteBehindRDBStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'c.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def wb_db(request, tmp_path: Path) -> str:
    """The write-behind storage's tests run on both backends hpo supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    return request.getfixturevalue("pg_url")


def test_ids_match_the_storage(db: str) -> None:
    study = optuna.create_study(study_name="s", storage=db)
    trial = study.ask()
    storage = oc.storage_of(study)
    assert storage.get_study_id_from_name("s") == oc.study_id(study)
    frozen = storage.get_trial(oc.trial_id(trial))
    assert frozen.number == trial.number and oc.trial_id(frozen) == oc.trial_id(trial)
    (summary,) = storage.get_all_studies()
    assert oc.study_id(summary) == oc.study_id(study)


def test_rdb_backend_is_found_inside_optunas_cache(db: str) -> None:
    study = optuna.create_study(storage=db)
    rdb = oc.rdb_of(study)
    assert isinstance(rdb, RDBStorage) and rdb is not oc.storage_of(study)
    assert oc.rdb_backend(rdb) is rdb
    assert oc.rdb_of(optuna.create_study()) is None
    assert oc.rdb_backend(InMemoryStorage()) is None


def test_heartbeat_is_seen_through_the_cache(db: str) -> None:
    beating = RDBStorage(db, heartbeat_interval=7, grace_period=20)
    study = optuna.create_study(storage=beating)
    assert oc.heartbeat_enabled(oc.storage_of(study))
    assert oc.heartbeat_interval(oc.storage_of(study)) == 7.0
    assert not oc.heartbeat_enabled(InMemoryStorage())
    assert oc.heartbeat_interval(oc.storage_of(optuna.create_study(storage=db))) is None


def test_record_heartbeat_writes_a_heartbeat_row(db: str) -> None:
    import sqlalchemy

    storage = RDBStorage(db, heartbeat_interval=7, grace_period=20)
    study = optuna.create_study(storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    oc.record_heartbeat(study, trial)
    with storage.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))]
    assert ids == [oc.trial_id(trial)]


def test_cached_trials_hold_the_trial_just_asked(db: str) -> None:
    study = optuna.create_study(storage=db)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    trial = study.ask()
    # ask() resets the per-trial cache; the sampler fills it: it holds the new trial
    trial.suggest_float("x", 0, 1)
    cached = oc.cached_trials(study)
    assert [t.number for t in cached] == [0, 1, 2, 3]
    assert oc.all_trials(study)[-1].number == trial.number


def test_all_trials_are_not_a_bracket_view() -> None:
    study = optuna.create_study(pruner=optuna.pruners.HyperbandPruner(min_resource=1,
                                                                       max_resource=9))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=8)
    assert [t.number for t in oc.all_trials(study)] == list(range(8))


def test_skip_waiting_lookup_creates_a_new_trial_and_restores_ask(db: str) -> None:
    study = optuna.create_study(storage=db)
    study.enqueue_trial({"x": 0.5})
    with oc.skip_waiting_lookup(study):
        fresh = study.ask()
    assert fresh.number == 1  # the WAITING trial 0 was not popped
    assert oc.storage_of(study).get_trial(oc.trial_id(fresh)).state == TrialState.RUNNING
    popped = study.ask()
    assert popped.number == 0 and popped.suggest_float("x", 0, 1) == 0.5
    with oc.skip_waiting_lookup(study, skip=False):
        assert study.ask().number == 2


def test_system_attrs_round_trip(db: str) -> None:
    study = optuna.create_study(storage=db)
    trial = study.ask()
    oc.set_trial_system_attr(study, trial, "k", [1, 2])
    oc.set_study_system_attr(study, "s", {"a": 1})
    assert study.trials[0].system_attrs["k"] == [1, 2]
    assert oc.study_system_attrs(study)["s"] == {"a": 1}


def test_a_failed_trial_is_logged_on_the_optimize_logger(caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study()

    def boom(trial: optuna.Trial) -> float:
        raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger=oc.OPTIMIZE_LOGGER):
        study.optimize(boom, n_trials=1, catch=(RuntimeError,))
    assert any(r.name == oc.OPTIMIZE_LOGGER and "boom" in r.getMessage() for r in caplog.records)


def test_a_grpc_client_with_an_interval_beats_inside_optimize(db: str) -> None:
    """Optuna treats the client as a heartbeat storage (it is a ``BaseHeartbeat`` with an
    interval), so ``optimize`` runs its heartbeat thread, which beats at once: a trial of
    0.2 s gets a heartbeat row, written by hpo's proxy end from the ``hpo:beat`` write (the
    attribute itself is not stored). Stale trials are the proxy's to fail: the client reports
    none. Served in-process by Optuna's own gRPC server."""
    import time

    import sqlalchemy
    from optuna.storages._grpc.server import make_server

    from hpo.db.heartbeats import BEAT_ATTR, relay_storage_class
    from tests.conftest import free_port

    rdb = relay_storage_class()(db, heartbeat_interval=1, grace_period=2)
    optuna.create_study(study_name="s", storage=rdb)
    port = free_port()
    server = make_server(optuna.storages.get_storage(rdb), "127.0.0.1", port)
    server.start()
    try:
        client = oc.heartbeat_grpc_client("127.0.0.1", port, 1, BEAT_ATTR)
        client.wait_server_ready(timeout=30)
        assert oc.heartbeat_enabled(client) and oc.heartbeat_interval(client) == 1.0
        assert not oc.heartbeat_enabled(oc.heartbeat_grpc_client("127.0.0.1", port, None,
                                                                 BEAT_ATTR))
        study = optuna.load_study(study_name="s", storage=client)
        study.optimize(lambda t: time.sleep(0.2) or t.suggest_float("x", 0, 1), n_trials=1)
        optuna.storages.fail_stale_trials(study)  # nothing to report from this side
        (trial,) = study.trials
        assert trial.state == TrialState.COMPLETE and BEAT_ATTR not in trial.system_attrs
        with rdb.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).all()
        assert [r[0] for r in rows] == [oc.trial_id(trial)]
        client.close()
    finally:
        server.stop(0)


# --- the write-behind storage (hpo's storage class) ----------------------------------------


def _statements(storage: RDBStorage) -> list[str]:
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(storage.engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: seen.append(statement))
    return seen


def test_write_behind_commits_attrs_and_reports_with_the_trials_end(wb_db: str) -> None:
    """User attributes and intermediate values of a running trial are held back (another
    process sees none of them), seen by this process at once, and committed in the
    transaction that finishes the trial."""
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    other = RDBStorage(wb_db)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(0.25, 5)
    trial.report(0.5, 10)
    trial.set_user_attr("curve", [0.1, (0.2, 0.3)])
    tid = oc.trial_id(trial)
    mine = oc.storage_of(study).get_trial(tid)
    assert mine.user_attrs == {"curve": [0.1, [0.2, 0.3]]}
    assert mine.intermediate_values == {5: 0.25, 10: 0.5}
    theirs = other.get_trial(tid)
    assert theirs.user_attrs == {} and theirs.intermediate_values == {}
    assert list(theirs.params) == ["x"]  # parameters are written through
    seen = _statements(storage)
    study.tell(trial, 0.75)
    assert sum(s.lstrip().upper().startswith("COMMIT") for s in seen) <= 1
    done = other.get_trial(tid)
    assert done.state == TrialState.COMPLETE and done.value == 0.75
    assert done.user_attrs == {"curve": [0.1, [0.2, 0.3]]}
    assert done.intermediate_values == {5: 0.25, 10: 0.5}


def test_write_behind_a_pruned_trial_takes_its_last_report(wb_db: str) -> None:
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage)

    def objective(trial: optuna.Trial) -> float:
        trial.report(0.3, 1)
        trial.report(0.4, 2)
        trial.set_user_attr("model_seed", 7)
        raise optuna.TrialPruned

    study.optimize(objective, n_trials=1)
    (done,) = optuna.load_study(study_name=study.study_name, storage=wb_db).trials
    assert done.state == TrialState.PRUNED and done.value == 0.4
    assert done.intermediate_values == {1: 0.3, 2: 0.4} and done.user_attrs == {"model_seed": 7}


def test_write_behind_a_trial_finished_elsewhere_keeps_the_sweepers_word(wb_db: str) -> None:
    """A trial a sweeper failed meanwhile: the tell is refused as before, nothing pending is
    written, and nothing stays pending."""
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.set_user_attr("a", 1)
    tid = oc.trial_id(trial)
    RDBStorage(wb_db).set_trial_state_values(tid, TrialState.FAIL)
    # its own trial is not read back: the finishing transaction finds it finished
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, 1.0)
    assert RDBStorage(wb_db).get_trial(tid).user_attrs == {}
    assert tid not in storage._wb_running
    trial2 = study.ask()
    trial2.set_user_attr("b", 2)
    RDBStorage(wb_db).set_trial_state_values(oc.trial_id(trial2), TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(oc.trial_id(trial2), TrialState.COMPLETE, [1.0])
    assert RDBStorage(wb_db).get_trial(oc.trial_id(trial2)).user_attrs == {}


def test_write_behind_beats_first_with_the_trial_creation(wb_db: str) -> None:
    """A trial created RUNNING with heartbeats on has its heartbeat row from the transaction
    that creates it (the database's clock); the first ``record_heartbeat`` (Optuna's heartbeat
    thread beats at once) is then skipped, the next ones write as Optuna's do. An enqueued
    (WAITING) trial gets no row until it runs."""
    import sqlalchemy

    storage = WriteBehindRDBStorage(wb_db, heartbeat_interval=7, grace_period=20)
    study = optuna.create_study(storage=storage)

    def beats() -> dict[int, object]:
        with storage.engine.connect() as conn:
            return dict(conn.execute(sqlalchemy.text(
                "SELECT trial_id, heartbeat FROM trial_heartbeats")).all())

    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    tid = oc.trial_id(trial)
    created = beats()
    assert list(created) == [tid]
    oc.record_heartbeat(study, trial)  # the first beat: already written
    assert beats() == created
    time.sleep(0.05 if wb_db.startswith("postgresql") else 1.05)  # SQLite's clock: seconds
    oc.record_heartbeat(study, trial)  # the next: a new time
    assert beats()[tid] > created[tid]
    study.enqueue_trial({"x": 1.0})
    assert list(beats()) == [tid]
    study.tell(trial, 1.0)


def test_a_skipped_first_beat_does_not_end_an_outage(wb_db: str) -> None:
    """hpo's storage ends an outage (:data:`hpo.db.retry.OUTAGE`, one line per outage) only
    with a write that went through: the first beat, skipped (written with the creation), is
    none; the next beat, written, is."""
    from hpo.db.heartbeats import rdb_storage_class
    from hpo.db.retry import OUTAGE

    storage = rdb_storage_class()(wb_db, heartbeat_interval=7, grace_period=20)
    study = optuna.create_study(storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    OUTAGE.reset()
    try:
        OUTAGE.failed("test", ConnectionError("lost"), "noticed by another thread")
        oc.record_heartbeat(study, trial)  # skipped: nothing was written
        assert OUTAGE.since is not None
        oc.record_heartbeat(study, trial)  # written
        assert OUTAGE.since is None
    finally:
        OUTAGE.reset()
    study.tell(trial, 1.0)


def test_write_behind_a_heartbeat_writes_what_is_pending(wb_db: str) -> None:
    storage = WriteBehindRDBStorage(wb_db, heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    trial.report(0.5, 3)
    trial.set_user_attr("k", "v")
    oc.record_heartbeat(study, trial)  # the trial's first beat: nothing written yet
    assert RDBStorage(wb_db).get_trial(oc.trial_id(trial)).user_attrs == {}
    time.sleep(1.1)
    oc.record_heartbeat(study, trial)
    seen = RDBStorage(wb_db).get_trial(oc.trial_id(trial))
    assert seen.intermediate_values == {3: 0.5} and seen.user_attrs == {"k": "v"}
    assert seen.state == TrialState.RUNNING
    study.tell(trial, 1.0)
    assert RDBStorage(wb_db).get_trial(oc.trial_id(trial)).state == TrialState.COMPLETE


def test_write_behind_a_new_trial_is_not_read_back(wb_db: str) -> None:
    # a random sampler: nothing reads the trials as a trial starts, so its creation reads
    # nothing ahead for it (the TPE case: test_write_behind_reads_at_a_trials_start_...)
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    seen = _statements(storage)
    with oc.skip_waiting_lookup(study):
        trial = study.ask()
    assert seen
    assert not any("FROM trial_params" in s or "FROM trial_user_attributes" in s for s in seen)
    assert trial.number == 2 and oc.storage_of(study).get_trial(oc.trial_id(trial)).number == 2


def test_write_behind_a_popped_waiting_trial_is_written_behind_too(wb_db: str) -> None:
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 0.5}, user_attrs={"from": "queue"})
    trial = study.ask()
    trial.set_user_attr("k", 1)
    assert RDBStorage(wb_db).get_trial(oc.trial_id(trial)).user_attrs == {"from": "queue"}
    study.tell(trial, trial.suggest_float("x", 0, 1))
    assert study.trials[0].user_attrs == {"from": "queue", "k": 1}


def test_skip_first_stale_check_skips_one_lookup_only(db: str) -> None:
    storage = RDBStorage(db, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=storage)
    cached = oc.storage_of(study)
    calls: list[int] = []
    real = type(cached)._get_stale_trial_ids
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(cached), "_get_stale_trial_ids",
                   lambda self, sid: calls.append(sid) or real(self, sid))
        with oc.skip_first_stale_check(study):
            assert cached._get_stale_trial_ids(oc.study_id(study)) == []
            assert cached._get_stale_trial_ids(oc.study_id(study)) == []
        assert calls == [oc.study_id(study)]
        with oc.skip_first_stale_check(study, skip=False):
            cached._get_stale_trial_ids(oc.study_id(study))
        with oc.skip_first_stale_check(study):
            pass
        cached._get_stale_trial_ids(oc.study_id(study))
        assert len(calls) == 3


@pytest.mark.parametrize("enqueued", [False, True])
def test_write_behind_its_view_of_a_running_trial_is_the_stored_trial(wb_db: str,
                                                                      enqueued: bool) -> None:
    """What ``get_trial`` answers for a trial this process runs, without reading it back, is
    what the database holds once the pending writes are flushed."""
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    if enqueued:
        study.enqueue_trial({"x": 0.25}, user_attrs={"q": 1})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.suggest_int("n", 1, 9, log=True)
    trial.suggest_categorical("c", ["a", None, 3])
    oc.set_trial_system_attr(study, trial, "through", [1, 2])
    oc.set_trial_system_attr_behind(study, trial, "behind", {"a": (1, 2)})
    trial.set_user_attr("u", 0.5)
    trial.report(0.1, 3)
    tid = oc.trial_id(trial)
    seen = _statements(storage)
    mine = storage.get_trial(tid)
    assert seen == []  # not read back
    assert RDBStorage(wb_db).get_trial(tid).system_attrs.get("behind") is None
    storage.flush_trial(tid)
    stored = RDBStorage(wb_db).get_trial(tid)
    assert mine == stored
    assert (mine.params, mine.distributions) == (stored.params, stored.distributions)
    assert mine.system_attrs == stored.system_attrs and mine.system_attrs["behind"] == {
        "a": [1, 2]}
    study.tell(trial, 0.5)
    assert RDBStorage(wb_db).get_trial(tid).state == TrialState.COMPLETE


@contextlib.contextmanager
def refused_writes(url: str, table: str) -> Iterator[None]:
    """While the block runs, the database refuses every INSERT and UPDATE on ``table`` (a
    trigger that raises: SQLite's RAISE(ABORT), PostgreSQL's RAISE EXCEPTION)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    if url.startswith("sqlite"):
        make = [f"CREATE TRIGGER refuse_{op} BEFORE {op} ON {table} BEGIN "
                "SELECT RAISE(ABORT, 'refused by the test'); END" for op in ("INSERT", "UPDATE")]
        drop = [f"DROP TRIGGER refuse_{op}" for op in ("INSERT", "UPDATE")]
    else:
        make = ["CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
                f"CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"]
        drop = [f"DROP TRIGGER refuse ON {table}", "DROP FUNCTION refuse()"]
    try:
        with engine.begin() as conn:
            for sql in make:
                conn.execute(sqlalchemy.text(sql))
        yield
    finally:
        with engine.begin() as conn:
            for sql in drop:
                conn.execute(sqlalchemy.text(sql))
        engine.dispose()


class _Flushes(WriteBehindRDBStorage):
    """Notes each failed flush of held writes (hpo's storage reports them in one line)."""

    def flush_failed(self, trial_id: int, e: BaseException) -> None:
        self.failed = [*getattr(self, "failed", []), e]


def _heartbeat_rows(url: str, trial_id: int) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                {"t": trial_id}).scalar_one()
    finally:
        engine.dispose()


def _due(storage: WriteBehindRDBStorage, trial_id: int) -> None:
    """Make the trial's held writes due at its next beat (it has run for an interval)."""
    storage._wb_running[trial_id].since -= 3600


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_write_behind_a_failing_held_write_never_stops_the_heartbeat(wb_db: str) -> None:
    """The beat is recorded first: held writes the database refuses at a beat stay held (the
    heartbeat goes on), and are written with the trial's end once the database takes them."""
    storage = _Flushes(wb_db, heartbeat_interval=1)
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    tid = oc.trial_id(trial)
    trial.set_user_attr("model_seed", 7)
    trial.report(0.5, 1)
    _due(storage, tid)
    with refused_writes(wb_db, "trial_user_attributes"):
        oc.record_heartbeat(study, trial)
    assert _heartbeat_rows(wb_db, tid) == 1  # the beat went through
    assert "refused by the test" in reason(storage.failed[0])
    assert RDBStorage(wb_db).get_trial(tid).user_attrs == {}
    assert storage.get_trial(tid).user_attrs == {"model_seed": 7}  # still held
    study.tell(trial, 0.9)
    done = RDBStorage(wb_db).get_trial(tid)
    assert done.state == TrialState.COMPLETE and done.user_attrs == {"model_seed": 7}
    assert done.intermediate_values == {1: 0.5}


def test_write_behind_held_writes_survive_a_failed_final_write(wb_db: str) -> None:
    """The trial's final write fails (the database refuses its value): nothing is written, the
    trial stays RUNNING and its held writes stay held, so the retried final write stores
    COMPLETE with every user attribute (``model_seed``) and report."""
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    tid = oc.trial_id(trial)
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("model_seed", 42)
    trial.report(0.25, 3)
    with refused_writes(wb_db, "trial_values"):
        try:
            ok = storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.75])
        except optuna.exceptions.StorageInternalError:
            ok = False  # PostgreSQL: raised; SQLite: Optuna's False for its IntegrityError
    assert not ok
    stored = RDBStorage(wb_db).get_trial(tid)
    assert stored.state == TrialState.RUNNING and stored.user_attrs == {}
    assert storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.75])
    done = RDBStorage(wb_db).get_trial(tid)
    assert done.state == TrialState.COMPLETE and done.value == 0.75
    assert done.user_attrs == {"model_seed": 42} and done.intermediate_values == {3: 0.25}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_write_behind_a_held_write_never_lands_in_a_finished_trial(wb_db: str) -> None:
    """A sweeper failed the trial while it ran here: the next beat writes none of its held
    writes into the FAIL trial (they are dropped), and its tell is refused."""
    storage = WriteBehindRDBStorage(wb_db, heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    tid = oc.trial_id(trial)
    trial.set_user_attr("late", 1)
    trial.report(0.1, 1)
    RDBStorage(wb_db).set_trial_state_values(tid, TrialState.FAIL)  # the sweeper
    _due(storage, tid)
    oc.record_heartbeat(study, trial)
    failed = RDBStorage(wb_db).get_trial(tid)
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs == {} and failed.intermediate_values == {}
    assert tid not in storage._wb_running
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial") as refused:
        study.tell(trial, 1.0)
    assert finished_elsewhere(refused.value)  # the trial loop's one line, then it carries on
    assert RDBStorage(wb_db).get_trial(tid).user_attrs == {}
