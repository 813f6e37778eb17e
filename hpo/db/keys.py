"""Every attribute key hpo writes into a study, declared once.

Studies are Optuna's; hpo's records live in their attributes. The ``hpo:`` keys are hpo's own,
the ``narrowing:`` keys the narrowing sampler's (:mod:`hpo.samplers.narrowing`).
"""

#: The book's metric: the name of a study's value when its spec has no ``[objective]``
#: (Optuna's ``study.metric_names``, set when hpo creates the study).
METRIC_NAME = "val_acc"

# Study attributes.
#: The validated spec as JSON: a study *system* attribute (older studies hold it as a user one).
SPEC_ATTR = "hpo:spec"
#: The spec's 12-digit SHA-256 key: a study user attribute (``optuna studies`` shows it).
SPEC_KEY_ATTR = "hpo:spec_sha256"
#: `hpo test`'s record of the test split read once: a study user attribute.
TEST_ATTR = "hpo:test"
#: `hpo confirm`'s record of the winner re-run with fresh seeds: a study user attribute.
CONFIRM_ATTR = "hpo:confirm"

# Trial system attributes written by hpo's trial loop.
#: A trial failed because it fell beyond the budget.
SURPLUS_ATTR = "hpo:surplus"
#: A WAITING trial closed (failed) because the study met its budget.
CLOSED_ATTR = "hpo:closed"
#: A trial its worker handed back (re-queued) as it stopped.
HANDED_BACK_ATTR = "hpo:handed_back"
#: A worker behind ``hpo proxy`` writes it as its heartbeat.
BEAT_ATTR = "hpo:beat"
#: A worker behind ``hpo proxy`` sends its running trial's held user attributes and reports
#: in it; the proxy writes them as rows, never as this attribute (hpo/db/held_proxy.py).
HELD_ATTR = "hpo:held"
#: A trial enqueued from an earlier study's configuration (``hpo run --warm-start``).
WARM_ATTR = "hpo:warm_start"

# Trial system attributes written by the narrowing sampler.
#: The trial's stage (``int``).
STAGE_ATTR = "narrowing:stage"
#: ``{param: [low, high]}`` (numeric) / ``{param: [choices]}``.
RANGES_ATTR = "narrowing:ranges"
#: Present when the previous stage's best trial sits on an edge.
EDGE_WARNING_ATTR = "narrowing:edge_warning"
#: ``True`` when the ranges came from an unfinished history.
PARTIAL_ATTR = "narrowing:partial"
#: The params whose range moved outward (``shift=True`` only).
SHIFTED_ATTR = "narrowing:shifted"
