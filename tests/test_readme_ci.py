"""The README begins with the install and test commands, and CI runs exactly those."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < text.index("\n\n", text.index("# ssmzoo") + 8) + 3, \
        "the README must start with its commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "install" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_commands_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in _readme_commands():
        assert command in ci_lines, f"CI does not run {command!r}"
    assert not any(line.startswith(("pip ", "apt", "python -m pip")) for line in ci_lines
                   if line not in _readme_commands()), "CI must not install anything the README does not"
