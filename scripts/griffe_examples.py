"""A griffe extension for the API reference (mkdocs.yml, mkdocstrings `extensions:`); the source is unchanged.

- resetassay's docstrings end in an `Example::` section (the reST literal block that `help()` shows as written, and
  tests/test_public_api.py requires); the Google-style parser reads `Examples:`, so the site renders those doctests
  as code.
- A `Returns:` section is prose ("An `AssayResult`: the tables ..."); the parser would read the words before its
  first colon as a type, so the section is marked typeless and shows the signature's return annotation.
- A config field declared with `fields.option(default, help=...)` (docs/design.md "Fields, not flags") is shown
  as its default, with its help as the field's docstring, as `resetassay run --help` shows it.
"""

from __future__ import annotations

import ast
import re

import griffe

EXAMPLE = re.compile(r"^(\s*)Example::\s*$", flags=re.M)
RETURNS = re.compile(r"^(\s*)Returns:\n(\s+)(?=\S)", flags=re.M)


def _literal(expr: object) -> str:
    """The text of a string expression (implicitly concatenated literals are one constant)."""
    return ast.literal_eval(str(expr))


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **_kwargs: object) -> None:
        if obj.docstring is not None:
            text = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = RETURNS.sub(r"\1Returns:\n\2: ", text)  # mkdocs.yml: returns_named_value false

    def on_attribute_instance(self, *, attr: griffe.Attribute, **_kwargs: object) -> None:
        value = attr.value
        if not (isinstance(value, griffe.ExprCall) and str(value.function) == "option"):
            return
        default: object = None
        for argument in value.arguments:
            if isinstance(argument, griffe.ExprKeyword) and argument.name == "help":
                attr.docstring = griffe.Docstring(_literal(argument.value), parent=attr)
            elif isinstance(argument, griffe.ExprKeyword) and argument.name == "default_factory":
                factory = argument.value
                default = factory.body if isinstance(factory, griffe.ExprLambda) else f"{factory}()"
            elif not isinstance(argument, griffe.ExprKeyword):
                default = argument
        attr.value = default if default is not None else "None"
