"""hpo: hyperparameter optimization on Optuna, after chapter 6 of "Deep Learning from Scratch".

From Python, :func:`hpo.run` runs a study from a spec (a TOML path or a dict) with your own
objective function, as ``hpo run`` does (:mod:`hpo.engine.api`). The package imports nothing
heavy until it is used: ``hpo --help`` stays fast.
"""

__all__ = ["run"]


def __getattr__(name: str):
    if name == "__version__":  # from the installed package's metadata, as `hpo --version`
        from hpo.logs import version

        return version()
    if name == "run":
        from hpo.engine.api import run

        return run
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
