"""The real command line in a test: `invoke` (typer's CliRunner on `resetassay.cli.app`), a small run (`SMALL`
flags, `run_small`), and the answer to bad input (`one_error`: exactly one `error:` line holding every needle, and
the exit code). Shared by tests/test_bad_input.py and tests/cli/test_bad_input_*.py."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from resetassay.cli import app

SMALL = ["--utilities", "gxd,activation", "--metrics", "l1", "--calib-size", "32", "--probe-size", "32",
         "--no-joint", "--quiet"]
runner = CliRunner()


def invoke(*args: object) -> object:
    """`resetassay ARGS...` in this process."""
    return runner.invoke(app, [str(a) for a in args])


def run_small(*args: object, out: Path) -> object:
    """`resetassay run ARGS... --out OUT` with the SMALL flags."""
    return runner.invoke(app, ["run", *map(str, args), "--out", str(out), *SMALL])


def errors(result) -> list[str]:
    """The `error:` lines of a command's stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def one_error(result, code: int, *needles: str) -> str:
    """Exactly one `error:` line, containing every needle, and the exit code."""
    assert result.exit_code == code, result.output
    found = errors(result)
    assert len(found) == 1, result.stderr
    for needle in needles:
        assert needle in found[0], found[0]
    return found[0]
