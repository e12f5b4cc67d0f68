"""The README's code blocks work as written: a reader copies them first.

Every ``python`` block runs, in order, in one namespace (as a reader pastes them into one
session), in a temporary directory so that what they write lands there. Every ``bash`` block
is checked for what can be checked without running an experiment for minutes: each ``make``
target exists, each script it names exists and accepts the flags shown (``--help`` parses), each module
run with ``python -m`` exists,
and each ``pip install`` names an extra that ``pyproject.toml`` defines.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]


def test_there_are_blocks_of_both_kinds():
    assert len(PYTHON) >= 4 and len(BASH) >= 2


def test_python_blocks_run_in_order(tmp_path):
    """In a fresh process with JAX's defaults (not this suite's strict settings), as a reader runs them."""
    script = "\n".join(f"# --- README python block {n}\n{code}" for n, code in enumerate(PYTHON))
    (tmp_path / "readme_blocks.py").write_text(script)
    result = subprocess.run([sys.executable, "readme_blocks.py"], capture_output=True, text=True, cwd=tmp_path,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def commands():
    """Each command line of the bash blocks, comments and continuation lines joined."""
    for code in BASH:
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                yield line


MAKE_TARGETS = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


@pytest.mark.parametrize("command", sorted(set(commands())))
def test_bash_commands_name_what_exists(command):
    words = shlex.split(command)
    while words and "=" in words[0]:  # leading VAR=value assignments
        words = words[1:]
    if words[0] == "make":
        assert words[1] in MAKE_TARGETS, command
    elif words[:3] == ["pip", "install", "--no-deps"]:
        assert words[3] in (ROOT / "Makefile").read_text(), command  # the pin that make installs
    elif words[:3] == ["pip", "install", "-e"]:
        extra = re.fullmatch(r"\.(?:\[(\w+)\])?", words[3])
        assert extra and (extra.group(1) is None or extra.group(1) in EXTRAS), command
    elif words[0] in ("python", "python3") and words[1] == "-m":  # a module run as a script
        assert importlib.util.find_spec(words[2] + ".__main__" if words[2].count(".") else words[2]), command
    elif words[0] in ("python", "python3"):
        script = ROOT / words[1]
        assert script.exists(), command
        flags = [w for w in words[2:] if w.startswith("--")]
        result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                cwd=ROOT, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)
        assert result.returncode == 0, result.stderr
        for flag in flags:
            assert flag.split("=")[0] in result.stdout, (command, flag)
    else:
        pytest.fail(f"a README command this test does not know how to check: {command}")
