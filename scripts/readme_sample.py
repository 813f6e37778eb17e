"""Regenerate the README's sample output from a real run of the quick start.

    .venv/bin/python scripts/readme_sample.py            # rewrite the block in README.md
    .venv/bin/python scripts/readme_sample.py --print    # only print it

Runs ``hpo run studies/book-random.toml`` (the quick start's command) in a fresh temporary
directory, so that it starts from an empty ``./hpo.db`` as a new user's first run does, and puts
what it printed between ``<!-- sample -->`` and ``<!-- /sample -->`` in README.md: the command,
its first stderr line, the progress bar's last state (its timings are this run's), all of
stdout, then the edge warnings it printed on stderr. tests/test_readme.py checks that the
sample's Best-1 line is what the quick start prints.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = "hpo run studies/book-random.toml"
START, END = "<!-- sample -->", "<!-- /sample -->"


def on_a_terminal(args: list[str], *, columns: int = 100, cwd: str | None = None,
                  env: dict[str, str] | None = None,
                  timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run ``args`` with stderr on a pseudo-terminal ``columns`` wide (as in a shell: hpo draws
    its progress bar only on a terminal; a fresh pseudo-terminal is 0 wide and tqdm would draw
    nothing); ``stderr`` is what the terminal showed. tests/test_engine_progress.py runs hpo
    this way too."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, text=True,
                            env=env)
    os.close(slave)
    shown = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer exited
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=30)
    os.close(master)
    return subprocess.CompletedProcess(args, proc.returncode, out,
                                       shown.decode(errors="replace"))


def quick_start_output(cwd: str) -> subprocess.CompletedProcess:
    """The quick start's run, in ``cwd`` (its ./hpo.db), as ``.venv/bin/hpo`` runs it in a
    terminal 100 columns wide."""
    args = [sys.executable, "-m", "hpo", *COMMAND.split()[1:-1], str(ROOT / COMMAND.split()[-1])]
    return on_a_terminal(args, cwd=cwd,
                         env={**os.environ, "HPO_STORAGE": "", "OPTUNA_STORAGE": ""})


def sample_block(run: subprocess.CompletedProcess) -> str:
    frames = [f for f in re.split(r"[\r\n]", run.stderr) if f.strip()]
    first = frames[0]
    bar = [f for f in frames if "%|" in f]
    warned = [f for f in frames if f.startswith("hpo run: warning: ")]  # stderr, after stdout
    lines = [f"$ .venv/bin/{COMMAND}", first, *bar[-1:], *run.stdout.rstrip("\n").splitlines(),
             *warned]
    return "```text\n" + "\n".join(lines) + "\n```"


def readme_sample(text: str) -> str:
    """The sample block of a README's text (between the markers)."""
    return text.split(START + "\n", 1)[1].split("\n" + END, 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print, do not write README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpo-quick-start-") as tmp:
        run = quick_start_output(tmp)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 1
    block = sample_block(run)
    if args.print:
        print(block)
        return 0
    text = README.read_text()
    README.write_text(text.replace(readme_sample(text), block))
    print(f"README.md: sample updated ({block.count(chr(10)) - 1} lines)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
