"""What is made of a finished run (SPEC S5, S5b), from a run directory's tables alone, never from a model: the
reports people read, the CI gate and the run sent to an experiment tracker.

    from resetassay.report import render
    render("reports/fixtures")                 # report.md, report.html, aggregate.csv, figures/
    render("reports/fixtures", q=[0.01, 0.05, 0.1])   # plus a Shock@q sweep

`render.py` reads the tables (through io/rundir.py) and computes the aggregates once; `headline.py` is the
first screen, `blocks.py` says what the report holds; `markdown.py` and `html.py` write it; `figures.py` draws
the figures. `gate.py` checks a run against a baseline (`resetassay check`, `resetassay baseline`);
`tracking.py` logs a run to MLflow, W&B or TensorBoard (`log_run`). Nothing in this package imports torch or
captum.
"""

from resetassay.report.render import render

__all__ = ["render"]
