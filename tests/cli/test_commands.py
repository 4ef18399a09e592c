"""End to end: the `resetassay` command on a bundled fixture (SPEC S4-S5 through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.paths import FIXTURES
from typer.testing import CliRunner

from resetassay.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["run", str(FIXTURES / "silu_mlp"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_run_writes_tables_report_and_figures(run_dir: Path) -> None:
    for name in ("units.csv", "summary.csv", "notes.csv", "checkpoints.csv", "run.json", "report.md",
                 "figures/regret.png", "figures/scatter_l1.png", "figures/scatter_kl.png"):
        assert (run_dir / name).stat().st_size > 0, name
    units = pd.read_csv(run_dir / "units.csv")
    assert set(units["checkpoint"]) == {"silu_mlp/task2", "silu_mlp/task4"}
    assert len(units) == 2 * 3 * 64  # two checkpoints, three hidden layers of 64 units
    assert "gxd" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_gxd_ranks_better_than_activation_on_silu_mlp(run_dir: Path) -> None:
    """The paper's central claim (SPEC S6), on our SiLU fixture: GXD beats activation magnitude."""
    s = pd.read_csv(run_dir / "summary.csv")
    pooled = s[(s["scope"] == "ALL") & (s["metric"] == "l1")].groupby("utility")["spearman"].mean()
    assert pooled["gxd"] > pooled["activation"] + 0.05
    assert pooled["oracle"] == pytest.approx(1.0)


@pytest.mark.slow
def test_report_rerenders_from_tables_alone(run_dir: Path) -> None:
    (run_dir / "report.md").unlink()
    (run_dir / "figures" / "regret.png").unlink()
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.md").exists() and (run_dir / "figures" / "regret.png").exists()


def test_inspect_lists_unit_layers_with_producer_and_consumer() -> None:
    result = runner.invoke(app, ["inspect", str(FIXTURES / "resnet" / "task2")])
    assert result.exit_code == 0, result.output
    assert "stages.0.0.act1" in result.output and "stages.0.0.conv2" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "does/not/exist"], "does/not/exist"),
        (["run", str(FIXTURES / "silu_mlp"), "--utilities", "gxd,bogus"], "bogus"),
        (["run", str(FIXTURES / "silu_mlp"), "--metrics", "l2"], "--metrics"),
        (["run", str(FIXTURES / "silu_mlp"), "--layers", "nothing.*"], "--layers"),
        (["run", str(FIXTURES / "silu_mlp"), "--calib-size", "5000"], "--calib-size"),
        (["report", "no/such/run"], "units.csv"),
        (["run", str(FIXTURES / "silu_mlp"), "--figures", "jpg"], "--figures 'jpg': choose png, svg or none"),
        (["report", "no/such/run", "--figures", "jpg"], "--figures 'jpg': choose png, svg or none"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_flag(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path)] if args[0] == "run" else [])])
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_python_dash_m_resetassay_is_the_command_line() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "resetassay", "inspect", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "Usage: resetassay inspect" in done.stdout


@pytest.mark.slow
def test_run_ends_with_the_verdict_table(tmp_path):
    """The closing table is the report's verdict (SPEC S5b) per family and unit kind: the best by regret, those
    indistinguishable from it, the cheapest of them and those that fail, as verdict.csv holds them."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(FIXTURES / "cnn" / "task2"), "--out", str(out), "--utilities",
                                 "gxd,activation,mc_adaptable,random,oracle", "--metrics", "l1", "--calib-size",
                                 "64", "--probe-size", "64", "--no-joint", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "verdict (l1)" in result.stdout
    verdict = pd.read_csv(out / "verdict.csv")
    assert set(verdict["kind"]) == {"channels"} and "mc_adaptable" not in set(verdict["utility"])  # BatchNorm
    best = verdict[verdict["best"]].iloc[0]
    table = result.stdout.split("verdict (l1)")[1].split("┡")[1].split("wrote")[0]  # the rows
    assert "· channels" in table and f"{best['utility']} (" in table and "random" not in table


@pytest.mark.slow
def test_a_report_that_fails_to_draw_keeps_the_run_exit_0_with_one_warning_line(tmp_path, monkeypatch):
    """The assay succeeded: its tables stay, report.md and report.html are written without the figures and say
    why, the warning names the cause and the retry, and the exit code is the assay's (README "What happens
    when...")."""
    from resetassay.report import figures

    def broken(*_args: object) -> None:
        raise RuntimeError("no usable font")

    monkeypatch.setattr(figures, "utility_scatter", broken)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--out", str(out), "--utilities",
                                 "gxd,oracle", "--metrics", "l1", "--calib-size", "64", "--probe-size", "64",
                                 "--no-joint", "--quiet"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if "no usable font" in line]
    assert line.startswith("warning: ") and "(RuntimeError: no usable font)" in line
    assert f"run `resetassay report {out}` to retry, or --figures none to skip them" in line
    assert pd.read_csv(out / "units.csv")["gxd"].notna().all()
    text = (out / "report.md").read_text()
    assert "Drawing the figures failed (RuntimeError: no usable font)" in text and "Tables per model family" in text
    assert (out / "report.html").exists() and not (out / "figures").exists()
    assert f"wrote {out}/ (units.csv, summary.csv, report.md, report.html)" in result.stdout
    assert "report" not in json.loads((out / "timings.json").read_text())  # `report --log` draws it again


@pytest.mark.parametrize("command", ["run", "report", "check", "baseline", "inspect", "train"])
def test_help_renders_verbatim(command):
    """No markup eaten in --help (issue 27): extras' names keep their brackets and `pkg.mod:factory` is not an
    emoji; Rich markup in typer's help is off."""
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    wanted = {"run": ["resetassay[torchvision]", "resetassay[timm]", "resetassay[parquet]", "resetassay[mlflow]",
                      "pkg.mod:factory"],
              "report": ["resetassay[mlflow] / [wandb] / [tensorboard]"]}.get(command, [])
    for needle in wanted:
        assert needle in text, needle
    assert "resetassay / /" not in text and "╭" not in result.output


@pytest.mark.parametrize(("flag", "value", "needle"), [("--utilities", "gdx,oracle", "(did you mean gxi or gxd?)"),
                                                       ("--metrics", "kll", "(did you mean kl?)")])
def test_an_unknown_name_suggests_close_ones(tmp_path, flag, value, needle):
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), flag, value, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and needle in result.output


def test_inspect_piped_prints_plain_lines_that_never_cut_a_layer_name(tmp_path) -> None:
    """Not a terminal (a pipe, a file): one plain line per unit layer, its full name first, whatever the width."""
    from helpers.foreign_models import nano_gpt_full
    from safetensors.torch import save_file

    save_file({k: v for k, v in nano_gpt_full().state_dict().items() if k != "model.lm_head.weight"},
              str(tmp_path / "g.safetensors"))
    result = runner.invoke(app, ["inspect", str(tmp_path / "g.safetensors"), "--model",
                                 "helpers.foreign_models:nano_gpt_full", "--seq-len", "8"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    firsts = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert firsts[0] == "layer" and "model.transformer.h.1.attn.heads" in firsts, result.stdout
    assert "…" not in result.stdout and "│" not in result.stdout


def test_inspect_takes_a_padded_token_file_as_run_does_and_finds_bert_heads(tmp_path) -> None:
    """A BERT classifier on a padded token file with an attention mask: `inspect` reads it as `run` does (PAD never
    reaches the embedding), and finds the heads of its attention (BertSelfAttention, read by BertSelfOutput.dense)."""
    import json

    import torch
    from safetensors.torch import save_file

    transformers = pytest.importorskip("transformers")
    fields = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 16, "num_labels": 3}
    torch.manual_seed(0)
    save_file(transformers.BertForSequenceClassification(transformers.BertConfig(**fields)).state_dict(),
              str(tmp_path / "bert.safetensors"))
    ids = torch.randint(1, 32, (8, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(8, 10, dtype=torch.long)
    mask[::2, 6:] = 0
    save_file({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.arange(8) % 3},
              str(tmp_path / "t.safetensors"))
    result = runner.invoke(app, ["inspect", str(tmp_path / "bert.safetensors"), "--model",
                                 "transformers:BertForSequenceClassification", "--model-kwargs", json.dumps(fields),
                                 "--data", str(tmp_path / "t.safetensors")])
    assert result.exit_code == 0, result.output
    assert "bert.encoder.layer.0.intermediate" in result.stdout
    assert "bert.encoder.layer.0.attention.self.heads" in result.stdout.split()
    assert "attention heads not found" not in result.stderr
