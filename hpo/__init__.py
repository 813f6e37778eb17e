"""hpo: hyperparameter optimization on Optuna, after chapter 6 of "Deep Learning from Scratch"."""


def __getattr__(name: str) -> str:
    if name == "__version__":  # from the installed package's metadata, as `hpo --version`
        from hpo.logs import version

        return version()
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
