"""``hpo init SPEC``: create the schema and the study once, before any worker starts.

This is what the compose ``init`` service runs: the schema and the study are made here, and
every ``hpo worker`` only loads them (it needs nothing but the study's name). Started together
with workers, other ``hpo init`` or ``hpo run`` on an empty database, it is safe: creation is
serialised and retried, and the workers wait for it (:mod:`hpo.db.storage`).

Running it again is safe: the study is loaded, its recorded spec compared with SPEC (a different
spec is refused, exit 2), and a new ``--n-trials`` budget is recorded. It writes nothing before
the spec, the sampler, the pruner and the data have all been checked.
"""

from __future__ import annotations

import argparse
import logging

from hpo.commands import flags
from hpo.commands.common import spec_from_args
from hpo.errors import UsageError

log = logging.getLogger("hpo.init")

HELP = "create the schema and the study of a spec, run nothing"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Create the Optuna schema and the study of SPEC once, before any worker "
                     "starts (the compose init service); safe to re-run.")
    p.epilog = flags.SPEC_EPILOG
    flags.files(p.add_argument("spec", metavar="SPEC", help="study spec file (TOML)"))
    flags.storage(p)
    flags.study_flag(p, help="study name (default: the spec's name)")
    p.add_argument("--n-trials", type=flags.TRIALS, metavar="N",
                   help="the study's budget: finished trials it should hold in total, recorded "
                        "in the study for every worker (default: the spec's [budget])")


def init(args: argparse.Namespace) -> int:
    """Create (or check) the schema and the study of ``args.spec``; print one line."""
    from hpo.db.retry import with_retries
    from hpo.db.storage import mask_url, resolve_url
    from hpo.engine.loop import count
    from hpo.engine.study import RunRequest, open_study

    spec, study_name = spec_from_args(args)
    url = resolve_url(args.storage)
    if url.startswith("grpc://"):
        raise UsageError("hpo init needs the database URL, not a gRPC proxy: the proxy does not "
                         "create schemas")
    # sampler, pruner and data first: bad input stops us before anything is written
    study = open_study(RunRequest(study_name, url, spec, who="hpo init"),
                       heartbeat=False, tracking=False)[0]
    done, in_flight = with_retries(lambda: count(study), who="hpo init",
                                   what=f"the storage {mask_url(url)}")
    log.info("hpo init: study %r ready on %s: budget %d trials (%d finished, %d in flight), "
             "sampler %s; join with `hpo worker --study %s`", study_name, mask_url(url),
             spec.n_trials, done, in_flight, spec.sampler, study_name)
    return 0
