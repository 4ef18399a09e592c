"""The command line and the library's configs cannot drift (docs/design.md "Fields, not flags"): `run`'s options are
generated from AssayConfig; `train`'s are written by hand because they build several objects (the zoo's kwargs,
the data spec, the CBP config) and derive defaults from the data, so a test holds them to the configs' fields."""

from __future__ import annotations

import dataclasses

import typer

from resetassay.cli.commands import app
from resetassay.cli.flags import command_flags
from resetassay.train.cbp import CBPConfig
from resetassay.train.loop import TrainConfig

# TrainConfig fields that no single flag sets: what --widths, --activation, --layer-norm, --blocks and --init build,
# what --data and its options build, and the CBP config that --cbp switches on.
BUILT = {"model_kwargs": "--widths", "data": "--data", "cbp": "--cbp"}
# Fields whose command-line default is None because the command derives it (from the data: tasks, epochs).
DERIVED = {"tasks", "epochs_per_task", "checkpoint_at", "checkpoint_in"}


def _train() -> object:
    return typer.main.get_command(app).commands["train"]


def test_every_train_and_cbp_field_is_a_train_flag_of_the_same_name():
    flags = command_flags(_train())
    for config in (TrainConfig, CBPConfig):
        for f in dataclasses.fields(config):
            expected = BUILT.get(f.name, f"--{f.name.replace('_', '-')}")
            assert f.name in BUILT or flags.get(f.name, (None,))[0] == expected, (config.__name__, f.name)
            if f.name in BUILT:
                assert expected in {flag for flag, _ in flags.values()}, expected


def test_train_flag_defaults_are_the_configs_defaults():
    params = {p.name: p for p in _train().params}
    for f in dataclasses.fields(TrainConfig):
        if f.name in BUILT or f.name in DERIVED or f.default is dataclasses.MISSING:
            continue
        assert params[f.name].default == f.default, (f.name, params[f.name].default, f.default)
    for f in dataclasses.fields(CBPConfig):  # given only with --cbp: None there means the config's default
        assert params[f.name].default is None, f.name
