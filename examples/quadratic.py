"""A plain function: the 2-D Rosenbrock valley, minimised. ``x`` comes from the spec's
[search] (its bounds), ``y`` is define-by-run: the function asks for it itself."""


def objective(trial, config):
    x = trial.suggest_float("x", -2.0, 2.0)
    y = trial.suggest_float("y", -1.0, 3.0)
    a, b = config["a"], config["b"]
    return (a - x) ** 2 + b * (y - x * x) ** 2
