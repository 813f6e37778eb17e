"""bench_storage.py's "hpo-fn" workers: the objective of its plain Optuna clients, as a user's
own function: the book's two parameters (from the spec's [search]), the same four user
attributes (two 50-point curves), a constant. What is left of a trial is hpo's worker loop and
its storage, against Optuna's ``study.optimize`` and its RDBStorage."""

CURVE = [round(0.1 + 0.8 * i / 49, 6) for i in range(50)]


def objective(trial):
    trial.suggest_float("lr", 1e-6, 1e-2, log=True)
    trial.suggest_float("weight_decay", 1e-8, 1e-4, log=True)
    for key, value in (("train_acc", 0.9), ("train_acc_curve", CURVE),
                       ("val_acc_curve", CURVE), ("model_seed", trial.number)):
        trial.set_user_attr(key, value)
    return 0.5
