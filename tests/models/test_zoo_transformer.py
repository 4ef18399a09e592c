"""Transformers (SPEC S9): token and head unit layers, sequence logits, the zoo transformer through every stage.

Every number is checked against plain torch: utilities by autograd on the model's own forward, shocks by a
hand-written forward with one unit clamped, and the fast engine against the plain one on the zoo
transformer (tolerance as in helpers/engines.py: rel 1e-5 of the largest shock; float64 models for the
hand-computed values, atol/rtol 1e-6 as in tests/scoring/test_registry.py). The grammar task's own tests are in
tests/data/test_grammar.py, the sequence helpers' in tests/discovery/test_sequences.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.engines import assert_fast_equals_plain
from helpers.paths import FIXTURES
from torch import nn

from resetassay import AssayConfig, assay_model
from resetassay.data.grammar import LENGTH, VOCAB, grammar_sequences
from resetassay.discovery.sequences import IGNORE, example_losses, next_token_targets, target_logits, with_padding
from resetassay.discovery.units import unit_layers
from resetassay.lesion import joint_shocks, unit_shocks
from resetassay.lesion.plain import clamped
from resetassay.models import create_model
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import unit_scores
from resetassay.train.cbp import CBPConfig, ContinualBackprop

TOL = {"atol": 1e-6, "rtol": 1e-6}


def _model(seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("transformer", **kwargs).eval()
    with torch.no_grad():  # biases away from zero, so references and compensations are not trivial
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def _data(n: int = 24, task: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return grammar_sequences(task, 0, "holdout", n)


def test_zoo_transformer_declares_heads_and_mlp_neurons_per_block():
    model = _model(n_layers=2, d_model=32, n_heads=4)
    x, _ = _data(2)
    layers = unit_layers(model, x)
    assert [(la.name, la.kind, la.n_units, la.group) for la in layers] == [
        ("blocks.0.attn.heads", "head", 4, 8), ("blocks.0.mlp.act", "token", 128, 1),
        ("blocks.1.attn.heads", "head", 4, 8), ("blocks.1.mlp.act", "token", 128, 1)]
    heads, mlp = layers[:2]
    assert heads.producer is None and "attention" in heads.producer_note and heads.consumer is model.blocks[0].attn.proj
    assert mlp.producer is model.blocks[0].mlp.fc_in and mlp.consumer is model.blocks[0].mlp.fc_out


def test_references_average_examples_and_positions_and_keep_a_vector_per_head():
    model = _model().double()
    x, _ = _data(10)
    layers = unit_layers(model, x[:2])
    seen = {}
    hooks = [la.module.register_forward_hook(lambda m, i, o, name=la.name: seen.__setitem__(name, o))
             for la in layers]
    model(x)
    for h in hooks:
        h.remove()
    refs = unit_references(model, layers, x)
    heads, mlp = layers[:2]
    torch.testing.assert_close(refs[mlp.name].double(), seen[mlp.name].mean(dim=(0, 1)), **TOL)
    b, t, _ = seen[heads.name].shape
    per_head = seen[heads.name].view(b, t, heads.n_units, heads.group).mean(dim=(0, 1))
    torch.testing.assert_close(refs[heads.name].double(), per_head, **TOL)


def _hand_logits(model: nn.Module, ids: torch.Tensor, block: int, site: str, unit: int,
                 value: torch.Tensor | None) -> torch.Tensor:
    """The zoo transformer's forward written out, unit `unit` of `site` ("mlp" or "heads") of `block` set to
    `value` (None: unclamped)."""
    x = model.tokens(ids) + model.positions[:, :ids.shape[1]]
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        q, k, v = a.qkv(blk.ln1(x)).chunk(3, dim=-1)
        split = [m.view(*ids.shape, a.n_heads, a.d_head).transpose(1, 2) for m in (q, k, v)]
        scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(a.d_head)
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
        heads = (scores.masked_fill(~causal, -math.inf).softmax(-1) @ split[2]).transpose(1, 2)  # (B, T, H, d)
        if i == block and site == "heads" and value is not None:
            heads = heads.clone()
            heads[:, :, unit] = value
        x = x + a.proj(heads.flatten(2))
        hidden = F.gelu(blk.mlp.fc_in(blk.ln2(x)))
        if i == block and site == "mlp" and value is not None:
            hidden = hidden.clone()
            hidden[..., unit] = value
        x = x + blk.mlp.fc_out(hidden)
    return model.head(model.ln_f(x))


@pytest.mark.slow
@pytest.mark.parametrize("site, layer_name, unit", [("mlp", "blocks.1.mlp.act", 7),
                                                     ("heads", "blocks.0.attn.heads", 2)])
def test_worked_example_shock_of_one_unit_by_hand(site, layer_name, unit):
    """l1 and kl of clamping one MLP neuron (or one head) are the per-position shocks averaged over positions,
    then over the probe set (SPEC S4, S9), from a forward written out by hand."""
    model = _model().double()
    x, _ = _data(16)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x[:8])
    probe = x[8:]
    with torch.no_grad():
        z = _hand_logits(model, probe, 0, "", 0, None)
        torch.testing.assert_close(z, model(probe), **TOL)
        zl = _hand_logits(model, probe, int(layer_name.split(".")[1]), site, unit, refs[layer_name][unit].double())
    l1 = (z - zl).abs().sum(-1).mean(1).mean(0)
    kl = (F.softmax(z, -1) * (F.log_softmax(z, -1) - F.log_softmax(zl, -1))).sum(-1).mean(1).mean(0)
    for engine in ("plain", "fast"):
        shocks = unit_shocks(model, layers, refs, probe, ["l1", "kl"], engine=engine,
                             units={la.name: torch.tensor([unit if la.name == layer_name else 0]) for la in layers})
        torch.testing.assert_close(shocks["l1"][layer_name][0].item(), l1.item(), **TOL)
        torch.testing.assert_close(shocks["kl"][layer_name][0].item(), kl.item(), **TOL)


def test_head_clamp_equals_a_plain_per_head_hook():
    model = _model()
    x, _ = _data(12)
    layers = unit_layers(model, x[:2])
    heads = layers[2]
    refs = unit_references(model, layers, x)
    idx = torch.tensor([1, 3])

    def by_hand(_m, _i, out):
        out = out.clone().view(*out.shape[:2], heads.n_units, heads.group)
        out[:, :, idx] = refs[heads.name][idx]
        return out.flatten(2)

    handle = heads.module.register_forward_hook(by_hand)
    with torch.no_grad():
        want = model(x)
    handle.remove()
    with clamped([(heads, idx, refs[heads.name][idx])]), torch.no_grad():
        got = model(x)
    assert torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"max_k": 3}, {"shortcut": False}, {"max_memory": 200_000}])
def test_fast_engine_equals_plain_on_the_zoo_transformer(options):
    model = _model(n_layers=3, d_model=32, n_heads=2)
    x, _ = _data(40)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x[:20])
    assert_fast_equals_plain(model, layers, refs, x[20:], **options)


def test_joint_lesions_of_heads_and_neurons_equal_plain():
    model = _model()
    x, _ = _data(20)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x[:10])
    lesions = [{"blocks.0.attn.heads": torch.tensor([0, 2]), "blocks.1.mlp.act": torch.tensor([5, 9, 11])},
               {"blocks.1.attn.heads": torch.tensor([3])}]
    plain = joint_shocks(model, layers, refs, lesions, x[10:], ["l1", "kl"], engine="plain")
    fast = joint_shocks(model, layers, refs, lesions, x[10:], ["l1", "kl"], engine="fast")
    for m in plain:
        torch.testing.assert_close(fast[m], plain[m], atol=1e-7, rtol=1e-5)


def test_utilities_of_token_and_head_units_by_autograd():
    """activation, contribution, loss_gradient, gxi, gxd and gxd_all of MLP neurons and heads, from autograd on
    the model's own forward (SPEC S3 with S9: sums over positions, and a head's features, before |.|)."""
    model = _model(d_model=16, n_heads=2, n_layers=1).double()
    x, y = _data(6)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x)
    needs = {"abs_act", "abs_dev", "loss_grad", "gxi", "gxd", "gxd_all"}
    stats = calibration_stats(model, layers, x, y, refs, needs, batch_size=4)
    scores, notes = unit_scores(["activation", "contribution", "mc_adaptable", "loss_gradient", "gxi", "gxd",
                                 "gxd_all"], layers, stats)
    for layer in layers:
        seen: dict[str, torch.Tensor] = {}

        def keep(_m, _i, out, seen=seen):
            seen["h"] = out.detach().requires_grad_()
            return seen["h"]

        handle = layer.module.register_forward_hook(keep)
        z = model(x)
        handle.remove()
        h = layer.view(seen["h"])                      # (B, n, T[, d])
        dims = tuple(range(2, h.dim()))
        r = refs[layer.name].double().view(layer.n_units, *[1] * (h.dim() - 2 - (layer.kind == "head")), -1) \
            if layer.kind == "head" else refs[layer.name].double().view(-1, 1)
        (g_target,) = torch.autograd.grad(target_logits(z, y).sum(), seen["h"], retain_graph=True)
        (g_loss,) = torch.autograd.grad(example_losses(z, y).sum(), seen["h"], retain_graph=True)
        g_target, g_loss = layer.view(g_target), layer.view(g_loss)
        want = {
            "activation": h.abs().mean(dim=(0, *dims)),
            "loss_gradient": g_loss.sum(dim=dims).abs().mean(0),
            "gxi": (h * g_target).sum(dim=dims).abs().mean(0),
            "gxd": ((h - r) * g_target).sum(dim=dims).abs().mean(0),
        }
        per_class = []
        for c in range(VOCAB):
            (g,) = torch.autograd.grad(z[..., c].sum(), seen["h"], retain_graph=True)
            per_class.append(((h - r) * layer.view(g)).sum(dim=dims).abs())
        want["gxd_all"] = torch.stack(per_class).mean(0).mean(0)
        w_out = layer.consumer.weight.detach().abs()
        want["contribution"] = want["activation"] * w_out.view(w_out.shape[0], layer.n_units, -1).sum(dim=(0, 2))
        for name, value in want.items():
            torch.testing.assert_close(scores[name][layer.name].double(), value.detach(), **TOL, msg=name)
    assert ("mc_adaptable", "blocks.0.attn.heads") in notes and "blocks.0.mlp.act" in scores["mc_adaptable"]


@pytest.mark.slow
def test_gxd_all_is_not_applicable_beyond_max_classes_and_says_why():
    model = _model(d_model=16, n_heads=2, n_layers=1)
    x, y = _data(8)
    result = assay_model(model, (x[:4], y[:4]), (x[4:], y[4:]),
                         config=AssayConfig(utilities=["gxd", "gxd_all", "oracle"], metrics=["l1"], max_classes=16))
    reasons = result.notes.query("utility == 'gxd_all'")["reason"]
    assert len(reasons) == 2 and all(f"{VOCAB} outputs" in r and "`max_classes`" in r for r in reasons)
    assert result.units["gxd_all"].isna().all() and result.units["gxd"].notna().all()


@pytest.mark.slow
def test_assay_model_on_the_transformer_reports_next_token_accuracy():
    model = _model()
    x, y = _data(16)
    result = assay_model(model, (x[:8], y[:8]), (x[8:], y[8:]),
                         config=AssayConfig(utilities=["gxd", "activation", "oracle"], metrics=["l1", "kl"]))
    with torch.no_grad():
        z = model(x[8:])
    scored = y[8:] != IGNORE
    want = float((z.argmax(-1) == y[8:])[scored].double().mean())
    assert result.checkpoints["probe_accuracy"].iloc[0] == pytest.approx(want)
    assert set(result.units["layer"]) == {"blocks.0.attn.heads", "blocks.0.mlp.act", "blocks.1.attn.heads",
                                          "blocks.1.mlp.act"}
    heads = result.units.query("layer == 'blocks.0.attn.heads'")
    refs = unit_references(model.eval(), unit_layers(model, x[:2]), x[:8])
    torch.testing.assert_close(torch.tensor(heads["reference"].values),
                               refs["blocks.0.attn.heads"].double().mean(1), **TOL)


def test_cbp_resets_mlp_neurons_and_leaves_heads_alone():
    model = _model(d_model=16, n_heads=2, n_layers=2).train()
    x, y = _data(32)
    cbp = ContinualBackprop(model, CBPConfig(utility="gxd", replacement_rate=0.5, maturity=1), x[:2])
    assert cbp.reset_layers == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    resets = 0
    for step in range(4):
        xb, yb = x[8 * step:8 * step + 8], y[8 * step:8 * step + 8]
        z = model(xb)
        cbp.observe(z, yb)
        example_losses(z, yb).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        resets += cbp.step(optimizer)
    assert resets > 0
    state = cbp.state()
    assert state["blocks.0.mlp.act.age"].shape == (64,) and not any("heads" in key for key in state)
    cbp.close()


def test_clamping_an_mlp_neuron_equals_its_compensated_reset():
    """Clamping neuron i to r_i equals zeroing fc_out's column i and adding w_out[:, i] * r_i to its bias, at every
    position (SPEC S4 for tokens)."""
    model = _model().double()
    x, _ = _data(8)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x)
    mlp = layers[1]
    i = 11
    with clamped([(mlp, torch.tensor([i]), refs[mlp.name][[i]])]), torch.no_grad():
        want = model(x)
    with torch.no_grad():
        fc_out = mlp.consumer
        fc_out.bias += fc_out.weight[:, i] * refs[mlp.name][i].double()
        fc_out.weight[:, i] = 0
        got = model(x)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.slow
def test_cli_runs_a_language_model_by_type_name_on_a_token_file(tmp_path):
    """`resetassay run` on a plain state dict of a Hugging Face model built from its config, token data from a file."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from resetassay.cli import app

    kwargs = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2,
              "vocab_size": VOCAB, "max_position_embeddings": LENGTH}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model("llama", **kwargs))
    save_file(model.state_dict(), tmp_path / "llama.safetensors")
    ids, _ = grammar_sequences(0, 0, "holdout", 64)
    save_file({"input_ids": ids}, tmp_path / "tokens.safetensors")
    import json

    result = CliRunner().invoke(app, [
        "run", str(tmp_path / "llama.safetensors"), "--model", "transformers:llama", "--model-kwargs",
        json.dumps(kwargs), "--data", str(tmp_path / "tokens.safetensors"), "--utilities", "gxd,activation,oracle",
        "--metrics", "l1", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    units = pd.read_csv(tmp_path / "run" / "units.csv")
    assert set(units["layer"]) == {"model.layers.0.self_attn.heads", "model.layers.0.mlp.neurons"}
    assert len(units) == 2 + 24 and units["shock_l1"].gt(0).all()


def test_inspect_lists_a_token_model_without_data_by_sequence_length():
    from typer.testing import CliRunner

    from resetassay.cli import app

    fixture = FIXTURES / "transformer" / "task2"
    result = CliRunner().invoke(app, ["inspect", str(fixture), "--seq-len", "8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "blocks.1.attn.heads" in result.output and "blocks.1.mlp.fc_in" in result.output
    result = CliRunner().invoke(app, ["inspect", str(fixture), "--seq-len", "8", "--input-shape", "8"])
    assert result.exit_code == 2 and "--input-shape and --seq-len: give one" in result.output
    mlp = fixture.parents[1] / "relu_mlp" / "task2"
    result = CliRunner().invoke(app, ["inspect", str(mlp), "--seq-len", "8"])
    assert result.exit_code == 2 and "--seq-len: the model has no nn.Embedding" in result.output


def _right_padded(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Grammar sequences cut to seeded lengths and right-padded with PAD, their targets, and the lengths."""
    ids, _ = grammar_sequences(0, seed, "holdout", n)
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    lengths[0] = LENGTH  # one full sequence
    mask = (torch.arange(LENGTH) < torch.tensor(lengths)[:, None]).long()
    return with_padding(ids, mask), next_token_targets(ids, mask), lengths


@pytest.mark.slow
def test_padding_is_left_out_of_references_utilities_and_shocks():
    """A right-padded batch gives what its sequences give one by one, cut to their lengths (a causal model: the pads
    never reach the tokens): references over real positions, per-example utilities, per-example shocks averaged over
    real positions — by both engines (SPEC S9)."""
    model = _model().double()
    x, y, lengths = _right_padded(8)
    singles = [(x[i:i + 1, :n], y[i:i + 1, :n]) for i, n in enumerate(lengths)]  # y: IGNORE before the pads
    padded = sequences_padded(model, x)
    layers = unit_layers(padded, x[:2])
    refs = unit_references(padded, layers, x)
    seen = {la.name: [] for la in layers}
    hooks = [la.module.register_forward_hook(lambda m, i, o, name=la.name: seen[name].append(o.detach()))
             for la in layers]
    with torch.no_grad():
        for xi, _ in singles:
            model(xi)
    for h in hooks:
        h.remove()
    for la in layers:
        real = torch.cat([la.view(o).movedim(2, 0).flatten(0, 1) for o in seen[la.name]])  # (positions, n[, d])
        torch.testing.assert_close(refs[la.name].double(), real.mean(0), **TOL)
    needs = {"abs_act", "abs_dev", "loss_grad", "gxi", "gxd", "gxd_all"}
    batch = calibration_stats(padded, layers, x, y, refs, needs)
    one_by_one = [calibration_stats(model, unit_layers(model, xi), xi, yi, refs, needs) for xi, yi in singles]
    for la in layers:
        for key in needs:
            want = torch.stack([getattr(s[la.name], key) for s in one_by_one]).double().mean(0)
            torch.testing.assert_close(getattr(batch[la.name], key).double(), want, **TOL, msg=f"{la.name} {key}")
    units = {la.name: torch.tensor([1, 3]) for la in layers}
    for engine in ("plain", "fast"):
        got = unit_shocks(padded, layers, refs, x, ["l1", "kl"], engine=engine, units=units)
        each = [unit_shocks(model, unit_layers(model, xi), refs, xi, ["l1", "kl"], engine="plain", units=units)
                for xi, _ in singles]
        for metric in ("l1", "kl"):
            for la in layers:
                want = torch.stack([e[metric][la.name] for e in each]).mean(0)
                torch.testing.assert_close(got[metric][la.name], want, **TOL, msg=f"{engine} {metric} {la.name}")


def sequences_padded(model, x):
    from resetassay.discovery.sequences import padded_tokens

    return padded_tokens(model, [x])


def test_a_model_without_an_attention_mask_refuses_left_padding():
    from resetassay.errors import BadInputError

    ids, _ = grammar_sequences(0, 0, "holdout", 4)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with pytest.raises(BadInputError, match="only right padding"):
        assay_model(_model(), (with_padding(ids, mask), next_token_targets(ids, mask)), (ids, next_token_targets(ids)),
                    config=AssayConfig(utilities=["gxd", "oracle"], metrics=["l1"]))
