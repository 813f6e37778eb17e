"""MLflow logging (hpo.engine.tracking, the extra `mlflow`) against real local MLflow stores: a file
store asked for by the spec, an SQLite store by --mlflow-uri. Skipped without mlflow unless
HPO_REQUIRE_MLFLOW=1 (.ci/run installs the extra and sets it)."""

from __future__ import annotations

import importlib.util
import os

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import hpo

if importlib.util.find_spec("mlflow") is None:
    if os.environ.get("HPO_REQUIRE_MLFLOW") == "1":
        raise RuntimeError("HPO_REQUIRE_MLFLOW=1 but mlflow is not installed: "
                           "pip install -e '.[test,mlflow]'")
    pytest.skip("mlflow is not installed (pip install -e '.[mlflow]')", allow_module_level=True)


def _runs(uri: str, experiment: str) -> list:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def _check(runs: list, study: optuna.Study, n_complete: int | None = None) -> None:
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    assert sorted(by_trial) == [t.number for t in study.trials]  # one run per finished trial
    if n_complete is not None:  # the exact budget
        assert sum(t.state == TrialState.COMPLETE for t in study.trials) == n_complete
    for t in study.trials:
        r = by_trial[t.number]
        if t.state == TrialState.FAIL:
            # two workers on SQLite may start one trial beyond the budget (no row lock):
            # it is failed as surplus, not counted, and its run says so
            assert r.info.status == "FAILED" and r.data.tags["optuna.state"] == "FAIL"
            continue
        assert r.info.run_name == f"trial-{t.number}" and r.info.status == "FINISHED"
        assert r.data.tags["optuna.study"] == study.study_name
        assert r.data.tags["optuna.state"] == "COMPLETE" and r.data.tags["hpo.worker"]
        assert r.data.metrics["val_acc"] == pytest.approx(t.value)
        assert r.data.metrics["train_acc"] == pytest.approx(t.user_attrs["train_acc"])
        assert {k: float(v) for k, v in r.data.params.items()} == \
            pytest.approx(dict(t.params), rel=1e-12)


@pytest.mark.slow
def test_spec_file_store_and_flag_sqlite_store(tmp_path, tiny_spec, sqlite_url):
    spec = tiny_spec(n_trials=4, extra='[tracking]\nmlflow = "file:./mlruns"')
    r = hpo("run", str(spec), "--storage", sqlite_url, "--workers", "2", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    runs = _runs(f"file:{tmp_path / 'mlruns'}", "tiny")
    _check(runs, study, n_complete=4)
    assert len({r.data.tags["hpo.worker"] for r in runs}) == 2  # each worker logs its own
    first = len(study.trials)  # 4, or 5 with a surplus trial

    # the budget raised to 6 (hpo init records it); a worker joining with --mlflow-uri logs
    # there instead (the flag wins over the spec)
    r = hpo("init", str(spec), "--storage", sqlite_url, "--n-trials", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = hpo("worker", "--study", "tiny", "--storage", sqlite_url, "--mlflow-uri", db, "-q",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    runs = _runs(db, "tiny")
    assert sorted(int(x.data.tags["optuna.trial"]) for x in runs) == [first, first + 1]
    assert len(_runs(f"file:{tmp_path / 'mlruns'}", "tiny")) == first


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_an_unusable_uri_is_bad_input_before_anything_is_written(tmp_path, tiny_spec):
    db = tmp_path / "hpo.db"
    r = hpo("run", str(tiny_spec(n_trials=1)), "--storage", f"sqlite:///{db}",
            "--mlflow-uri", "bogus://nowhere")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "MLflow tracking URI 'bogus://nowhere' cannot be used" in r.stderr
    assert not db.exists()
    bad = tiny_spec(n_trials=1, extra='[tracking]\nmlflow = ""')
    r = hpo("run", str(bad), "--storage", f"sqlite:///{db}")
    assert r.returncode == 2 and "tracking.mlflow: must be an MLflow tracking URI" in r.stderr


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_two_workers_making_the_experiment_together_make_one(tmp_path, kind):
    # CI caught two workers starting together on a file store (which has no unique names)
    # each making an experiment "tiny", their runs split between them. Here both look the
    # experiment up before either makes it: the test holds each, after its lookup, until the
    # other has looked too (or 3 s have passed, which a serialized maker always needs).
    import threading

    from hpo.engine.tracking import MlflowCallback

    uri = f"file:{tmp_path / 'mlruns'}" if kind == "file" else f"sqlite:///{tmp_path / 'ml.db'}"
    makers = [MlflowCallback(uri, "tiny", who=f"w{i}") for i in range(2)]
    both_looked = threading.Barrier(2, timeout=3)
    for m in makers:
        lookup = m.client.get_experiment_by_name

        def held(name: str, lookup=lookup):
            found = lookup(name)
            if found is None:
                try:
                    both_looked.wait()
                except threading.BrokenBarrierError:
                    pass  # the other is waiting for this one's lock: it looks after
            return found

        m.client.get_experiment_by_name = held
    ids: list[str] = []
    threads = [threading.Thread(target=lambda m=m: ids.append(m.experiment_id())) for m in makers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 2 and ids[0] == ids[1], ids
    from mlflow.tracking import MlflowClient

    named = [e for e in MlflowClient(tracking_uri=uri).search_experiments()
             if e.name == "tiny"]
    assert [e.experiment_id for e in named] == ids[:1]
