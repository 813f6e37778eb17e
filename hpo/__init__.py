"""hpo: hyperparameter optimization on Optuna, after chapter 6 of "Deep Learning from Scratch"."""

__version__ = "0.1.0"
