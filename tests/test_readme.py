"""The README's quick start is a contract: exactly two commands, and CI runs the second one."""

import re

from tests.conftest import ROOT


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
