"""The ``hpo`` commands, one thin module each: ``add_arguments(parser)`` declares the command's
flags (typed by :mod:`hpo.commands.flags`, which also holds the flag groups several commands
share), ``HELP`` is its line in ``hpo --help``, and its action wires the layers below (spec,
storage, engine, listing, figures) together. :mod:`hpo.cli` builds the parser from them and calls
the action; no command module imports another (:mod:`~hpo.commands.common` and
:mod:`~hpo.commands.flags` are shared helpers), and nothing below imports them.

A module's top-level imports are light (argparse, :mod:`hpo.catalog`, :mod:`hpo.errors`,
:mod:`hpo.logs`, flags and common); NumPy, Optuna, SQLAlchemy and the layers that pull them in
are imported when the command runs, so that ``hpo --help`` stays fast.
"""
