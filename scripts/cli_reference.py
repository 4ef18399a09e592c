"""The command-line reference, generated from the typer app (never hand-copied): every command's usage, help,
arguments and options, as `resetassay COMMAND --help` prints them.

Two uses:

    python scripts/cli_reference.py [FILE]     # print (or write) the markdown
    mkdocs build                               # mkdocs.yml names this file under `hooks:`

As an MkDocs hook it replaces the line `<!-- cli-reference -->` of docs/reference/cli.md with the markdown, so the
site's CLI page is rebuilt from the code on every build. tests/test_docs_examples.py checks the documented command
lines against the same app.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MARK = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[1]


def _app_command():
    """The click group typer builds for `resetassay` (typer vendors its own click)."""
    if str(ROOT) not in sys.path:  # the checkout's resetassay, also when mkdocs runs from another folder
        sys.path.insert(0, str(ROOT))
    import typer.main

    from resetassay.cli.commands import app

    return typer.main.get_command(app)


def commands() -> dict:
    """Command name -> (its click command, its context), in the order `resetassay --help` lists them."""
    root = _app_command()
    ctx = root.context_class(root, info_name="resetassay")
    found = {}
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        if command is not None and not command.hidden:
            found[name] = (command, command.context_class(command, info_name=name, parent=ctx))
    return found


_CODE = re.compile(r"(`[^`]*`)")


def _escape(text: str) -> str:
    """Help text as literal markdown: characters markdown would read (`*`, `[`, `|`, `_` at word edges) are
    escaped, `<`, `>` and `&` written as entities, outside `code` spans, which stay code."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):
        part = parts[i].replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for char in "*[]|":
            part = part.replace(char, "\\" + char)
        parts[i] = re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", part)
    return "".join(parts)


def _paragraphs(text: str) -> str:
    """A docstring's paragraphs, each joined into one line (click rewraps them the same way)."""
    import inspect

    blocks = re.split(r"\n\s*\n", inspect.cleandoc(text or ""))
    return "\n\n".join(_escape(" ".join(line.strip() for line in block.splitlines())) for block in blocks if block)


def _help_record(param, ctx) -> tuple[str, str]:
    record = param.get_help_record(ctx)
    if record is None:  # a hidden option
        return "", ""
    names, help_text = record
    return names, " ".join(help_text.split())


def command_markdown(name: str, command, ctx) -> str:
    """One command's section: usage, help, arguments and options (with defaults and [required])."""
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"## resetassay {name}", "", "```text", f"Usage: {ctx.command_path} {usage}", "```", "",
             _paragraphs(command.help), ""]
    arguments = [p for p in command.params if not getattr(p, "opts", [""])[0].startswith("-")]
    options = [p for p in command.params if p not in arguments]
    if arguments:
        lines += ["**Arguments**", "", "| argument | help |", "|---|---|"]
        for param in arguments:
            names, help_text = _help_record(param, ctx)
            lines.append(f"| `{names}` | {_escape(help_text)} |")
        lines.append("")
    lines += ["**Options**", "", "| option | help |", "|---|---|"]
    for param in options:
        names, help_text = _help_record(param, ctx)
        if names:
            lines.append(f"| `{names}` | {_escape(help_text)} |")
    lines += ["| `--help` | Show this message and exit. |", ""]
    return "\n".join(lines)


def cli_markdown() -> str:
    """The whole reference: the commands' list, then a section per command."""
    root = _app_command()
    listed = commands()
    lines = ["```text", "Usage: resetassay [OPTIONS] COMMAND [ARGS]...", "```", "", _paragraphs(root.help), "",
             "| command | what it does |", "|---|---|"]
    for name, (command, _) in listed.items():
        first = _paragraphs(command.help).split("\n\n")[0]
        lines.append(f"| [`resetassay {name}`](#resetassay-{name}) | {first} |")
    lines.append("")
    return "\n".join([*lines, *(command_markdown(name, *found) for name, found in listed.items())])


def on_page_markdown(markdown: str, page, **_kwargs) -> str:
    """MkDocs hook: the reference where a page says MARK."""
    return markdown.replace(MARK, cli_markdown()) if MARK in markdown else markdown


if __name__ == "__main__":
    text = cli_markdown()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    else:
        print(text)
