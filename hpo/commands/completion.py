"""``hpo completion bash|zsh|tcsh``: the shell's completion script for ``hpo``, generated from
the same parser the command uses (shtab), so that it never lags behind a flag."""

from __future__ import annotations

import argparse

from hpo.errors import RuntimeFailure


def completion(args: argparse.Namespace) -> int:
    """``args.parser``: the ``hpo`` parser itself (hpo.cli hands it over)."""
    try:
        import shtab
    except ImportError:
        raise RuntimeFailure("shell completion needs shtab, which is not installed: "
                             "pip install shtab (or hpo's extra [completion])") from None
    print(shtab.complete(args.parser, shell=args.shell), end="")
    return 0
