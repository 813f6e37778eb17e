"""The README's quick start is a contract: exactly two commands, CI runs the second one, and the
sample output it shows is what the first one prints."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import readme_sample  # noqa: E402


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_two_quick_start_commands():
    cmds = _quick_start_commands()
    assert len(cmds) == 2
    assert "hpo run studies/book-random.toml" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start_commands()[1] in ci


def test_sampler_and_pruner_tables_come_from_the_catalog():
    from hpo import catalog

    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- catalog -->\n", 1)[1].split("<!-- /catalog -->", 1)[0]
    assert block == catalog.markdown()
    for name in (*catalog.SAMPLER_NAMES, *catalog.PRUNER_NAMES):
        assert f"| `{name}` |" in block


def _sample_lines() -> list[str]:
    block = readme_sample.readme_sample((ROOT / "README.md").read_text())
    assert block.startswith("```text\n") and block.endswith("\n```")
    return block.splitlines()[1:-1]


def test_sample_is_a_run_of_the_quick_start():
    """The sample is the quick start's command and its output: the study line, the Best-20
    listing in the book's format (hpo's default, listing.TOP)."""
    from hpo.report.listing import TOP

    lines = _sample_lines()
    first_command = _quick_start_commands()[0]
    assert lines[0] == f"$ .venv/bin/{readme_sample.COMMAND}"
    assert first_command.endswith(f".venv/bin/{readme_sample.COMMAND}")
    assert lines[1].startswith("study 'book-random' on sqlite:///hpo.db: 100 trials")
    best = [x for x in lines if x.startswith("Best-")]
    assert [x.split("(", 1)[0] for x in best] == [f"Best-{i}" for i in range(1, TOP + 1)]
    assert re.fullmatch(r"Best-1\(val acc:0\.\d\d\) \| lr:[0-9.e-]+, weight decay:[0-9.e-]+ \| "
                        r"train acc:0\.\d\d, gap:[+-]0\.\d\d  \[trial \d+\]", best[0]), best[0]


@pytest.mark.slow
@pytest.mark.quickstart
def test_sample_best_1_is_what_the_quick_start_prints(tmp_path, request):
    """Runs the quick start's `hpo run studies/book-random.toml` for real, in an empty directory
    (its own ./hpo.db, as on a fresh clone): about a minute, so only in CI (.ci/run sets
    HPO_QUICKSTART=1) or when asked: `HPO_QUICKSTART=1 pytest tests/test_readme.py` or
    `pytest -m quickstart`."""
    if (os.environ.get("HPO_QUICKSTART") != "1"
            and "quickstart" not in (request.config.getoption("markexpr") or "")):
        pytest.skip("runs the quick start for real (about a minute): set HPO_QUICKSTART=1 or "
                    "select -m quickstart (CI does)")
    run = readme_sample.quick_start_output(str(tmp_path))
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    sample = _sample_lines()
    best_1 = next(x for x in sample if x.startswith("Best-1("))
    assert printed[0] == best_1
    assert not [x for x in printed if "warning:" in x]  # warnings go to stderr
    assert [x for x in run.stderr.splitlines() if x.startswith("hpo run: warning:")] == \
        [x for x in sample if x.startswith("hpo run: warning:")]
    assert (tmp_path / "hpo.db").exists()
    again = subprocess.run([sys.executable, "-m", "hpo", "best"], cwd=tmp_path, text=True,
                           capture_output=True, env={**os.environ, "HPO_STORAGE": ""})
    assert again.stdout.splitlines()[0] == best_1  # hpo best: no NAME needed on one study


def test_docs_stand_alone():
    """Nothing in the repository points at files outside it (the project's shared notes)."""
    outside = re.compile("|".join(["shared/" + "notes", "shared/" + "ARCHITECTURE",
                                   r"\.\./" + "shared", "/work/" + "shared"]))
    found = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if (path.is_file() and rel.parts[0] not in (".git", ".venv", "out", "runs")
                and not any(p.endswith((".egg-info", "_cache", "__pycache__")) for p in rel.parts)
                and path.suffix in {".md", ".toml", ".py", ".yml", ".txt", ""}
                and outside.search(path.read_text(errors="replace"))):
            found.append(str(rel))
    assert found == []


def _readme_flag_tables() -> dict[str, list[tuple[str, str]]]:
    """The README's flag tables: {"": the flags every command takes, "run": run's own, ...}."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- flags -->\n", 1)[1].split("<!-- /flags -->", 1)[0]
    tables: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in block.splitlines():
        m = re.fullmatch(r"`hpo (\S+)`:", line)
        if m:
            current = m.group(1)
        m = re.fullmatch(r"\| `(.+?)` \| (.*) \|", line)
        if m:
            tables.setdefault(current, []).append((m.group(1), m.group(2).replace("\\|", "|")))
    return tables


def _help_rows(help_text: str) -> list[tuple[str, str]]:
    """(invocation, help) of each argument in `hpo COMMAND --help`'s output."""
    rows: list[list[str]] = []
    body = help_text.split("\npositional arguments:\n", 1)[-1]
    body = re.split(r"\noptions:\n", body)
    lines = "\n".join(body).splitlines()
    for line in lines:
        if not line.strip() or not line.startswith(" "):
            continue
        m = re.match(r"  (\S.*?)(?:\s{2,}(.*))?$", line)
        if line.startswith("   ") and rows:  # a continuation of the help text
            rows[-1][1] += " " + line.strip()
        elif m:
            rows.append([m.group(1), m.group(2) or ""])
    return [(inv, " ".join(h.split())) for inv, h in rows]


def test_the_flag_tables_are_what_help_prints():
    """Every flag and default that `hpo COMMAND --help` prints is in the README, with the same
    words, and the README lists nothing else (`python -m hpo.cli` regenerates the tables)."""
    from hpo.cli import COMMANDS, COMMON_FLAGS, reference_markdown

    text = (ROOT / "README.md").read_text()
    assert text.split("<!-- flags -->\n", 1)[1].split("<!-- /flags -->", 1)[0] == \
        reference_markdown(), "README's flag tables are stale: python -m hpo.cli"
    tables = _readme_flag_tables()
    assert set(tables) == {"", *COMMANDS}
    for cmd in COMMANDS:
        shown = subprocess.run([sys.executable, "-m", "hpo", cmd, "--help"], capture_output=True,
                               text=True, env={**os.environ, "COLUMNS": "100"}, cwd=ROOT)
        assert shown.returncode == 0, shown.stderr
        rows = _help_rows(shown.stdout)
        common = [r for r in rows if r[0].split(",")[0].split()[0] in COMMON_FLAGS]
        own = [r for r in rows if r not in common]
        assert common == tables[""], cmd
        assert own == tables[cmd], (cmd, own, tables[cmd])


def test_the_command_summary_names_only_real_flags():
    """The Commands table's short forms (`hpo run SPEC [--workers W] ...`) name flags the
    command has."""
    from hpo.cli import _subparsers, build_parser

    text = (ROOT / "README.md").read_text()
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    commands = _subparsers(build_parser())
    seen = 0
    for cmd, usage in re.findall(r"^\| `hpo (\S+)([^`]*)` \|", section, re.M):
        flags = set(re.findall(r"(--[a-z][a-z-]*)", usage))
        known = {s for a in commands[cmd]._actions for s in a.option_strings}
        assert flags <= known, (cmd, flags - known)
        seen += 1
    assert seen == len(commands)  # every command has its row
