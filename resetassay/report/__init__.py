"""The reports people read (SPEC S5), drawn from a run directory's tables alone, never from a model.

    from resetassay.report import render
    render("reports/fixtures")                 # report.md, report.html, aggregate.csv, figures/
    render("reports/fixtures", q=[0.01, 0.05, 0.1])   # plus a Shock@q sweep

`render.py` reads the tables (through rundir.py) and computes the aggregates once; `blocks.py`
says what the report holds; `markdown.py` and `html.py` write it; `figures.py` draws the PNGs.
Nothing in this package imports torch or captum.
"""

from resetassay.report.render import render

__all__ = ["render"]
