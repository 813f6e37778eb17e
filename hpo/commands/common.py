"""What several commands share: opening the storage and an hpo study, heartbeat settings."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import optuna

from hpo.db.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    check_schema,
    get_storage,
    load_study_spec,
    resolve_url,
)
from hpo.errors import UsageError


def open_storage(args: argparse.Namespace) -> optuna.storages.BaseStorage:
    """The storage of ``--storage`` (else ``$HPO_STORAGE``, ``$OPTUNA_STORAGE``,
    ``sqlite:///hpo.db``), which must hold hpo's schema."""
    url = resolve_url(args.storage)
    storage = get_storage(url)
    check_schema(storage, url)
    return storage


def open_study(args: argparse.Namespace) -> optuna.Study:
    """The hpo study named ``args.study`` (a clear error for unknown and foreign studies)."""
    storage = open_storage(args)
    load_study_spec(storage, args.study)
    return optuna.load_study(study_name=args.study, storage=storage)


def heartbeat_settings(args: argparse.Namespace) -> tuple[int, int]:
    """(interval, grace period) in seconds from ``--heartbeat-interval`` / ``--grace-period``,
    else hpo's defaults; the grace period must be longer than the interval."""
    interval = getattr(args, "heartbeat_interval", None) or HEARTBEAT_INTERVAL
    grace = getattr(args, "grace_period", None) or max(GRACE_PERIOD, 2 * interval)
    if grace <= interval:
        raise UsageError(f"--grace-period ({grace}) must be longer than --heartbeat-interval "
                         f"({interval})")
    return interval, grace


def worker_storage(url: str, interval: int, grace: int, create_schema: bool
                   ) -> optuna.storages.BaseStorage:
    """The storage a worker runs trials on: heartbeats on (a dead worker's trial is failed
    after ``grace`` seconds and retried)."""
    return get_storage(url, heartbeat=True, heartbeat_interval=interval, grace_period=grace,
                       create_schema=create_schema)


def output_dir(flag: str, path: str | os.PathLike) -> Path:
    """``path`` as a folder hpo can create and write into, checked before anything is written:
    a folder that does not exist yet is made and removed again at once (nothing is left)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p}: exists and is not a folder")
    made = []
    try:
        probe = p
        while not probe.exists():
            made.append(probe)
            probe = probe.parent
        for folder in reversed(made):
            folder.mkdir()
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise UsageError(f"cannot create {flag} {p}: {e.strerror or e}") from None
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
    return p


def positive(flag: str, value: int | None) -> None:
    """``value`` (if given) must be >= 1."""
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be >= 1, got {value}")


def callbacks(*fns):
    """One Optuna callback calling each of ``fns`` that is not None (None when none is: then
    optimize() does not read each finished trial back)."""
    chosen = [f for f in fns if f is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None

    def each(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        for f in chosen:
            f(study, trial)

    return each
