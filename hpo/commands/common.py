"""What several commands share: opening the storage and an hpo study, a spec with the
command's flags applied, output folders. Light to import (what each function
needs is imported when it runs, as in every command module)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.errors import UsageError

if TYPE_CHECKING:
    import optuna

    from hpo.spec import Spec


def open_storage(args: argparse.Namespace) -> optuna.storages.BaseStorage:
    """The storage of ``--storage`` (else ``$HPO_STORAGE``, ``$OPTUNA_STORAGE``,
    ``sqlite:///hpo.db``), which must hold hpo's schema."""
    from hpo.db.storage import check_schema, get_storage, resolve_url

    url = resolve_url(args.storage)
    storage = get_storage(url)
    check_schema(storage, url)
    return storage


def open_study(args: argparse.Namespace) -> optuna.Study:
    """The hpo study named ``args.study`` (a clear error for unknown and foreign studies)."""
    import optuna

    from hpo.db.storage import load_study_spec

    storage = open_storage(args)
    load_study_spec(storage, args.study)
    return optuna.load_study(study_name=args.study, storage=storage)


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


def spec_from_args(args: argparse.Namespace) -> tuple[Spec, str]:
    """The spec of ``args.spec`` with the flags applied, and the study's name: ``--study``, else
    the spec's name with ``/data<D>`` and ``/seed<S>`` for ``--data-seed`` and ``--seed``
    (``hpo run``, ``hpo init``; the flags' types have checked their values)."""
    from dataclasses import replace

    from hpo.spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "n_trials", None) is not None:
        spec = spec.replace(n_trials=args.n_trials)
    suffix = ""
    if getattr(args, "data_seed", None) is not None:
        spec = spec.replace(data=replace(spec.data, seed=args.data_seed))
        suffix += f"/data{args.data_seed}"
    if getattr(args, "seed", None) is not None:
        spec = spec.replace(seed=args.seed)
        suffix += f"/seed{args.seed}"
    return spec, getattr(args, "study", None) or spec.name + suffix
