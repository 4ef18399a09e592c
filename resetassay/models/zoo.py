"""The model zoo: MLP, small CNN, small ResNet, small causal transformer, registered by name (DESIGN
"Checkpoint format").

Every zoo model declares its unit layers (SPEC S1) with `unit_layer_specs()`: the module whose
output holds the units, the module that produces them and the one that reads them, or the
reason why a producer/consumer is not well defined (normalisation, residual adds), and where a
CBP reset writes when the producer sits behind a per-unit norm (SPEC S7).
Checkpoint manifests name a factory of this registry (`resetassay.models:mlp`) and its kwargs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resetassay.discovery.units import UnitLayerSpec
from resetassay.plugins import Registry

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "model")  # the zoo's factories, by name
RESNET_WIDTHS = (8, 16, 32)  # the small ResNet's stage widths, one BasicBlock each by default


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a factory to the zoo under its function name."""
    return MODELS.register(fn.__name__, fn)


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a zoo model by registered name (a BadInputError suggesting close names when none is)."""
    return MODELS.get(name)(**kwargs)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


DEFAULT_INIT = "kaiming-relu"
KAIMING_NORMAL = "kaiming-normal"  # SPEC S6's ResNet-18 init ("Kaiming normal")
# SPEC S6: the two readings of the MLP's "Kaiming uniform", and the ResNet's Kaiming normal
INITS = (DEFAULT_INIT, "torch-default", KAIMING_NORMAL)


def kaiming_init_(module: nn.Module, normal: bool = False) -> None:
    """Kaiming weights with the ReLU gain and fan_in (uniform, or `normal`: std sqrt(2 / fan_in)), zero biases, of
    every Linear and Conv2d; BatchNorm/LayerNorm keep their unit scale and zero shift (SPEC S6 init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            fill = nn.init.kaiming_normal_ if normal else nn.init.kaiming_uniform_
            fill(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_weights_(module: nn.Module, init: str) -> None:
    """Initialise a zoo model (SPEC S6): `kaiming-relu` (`kaiming_init_`: Kaiming uniform), `kaiming-normal`
    (`kaiming_init_(normal=True)`: the ResNet-18's Kaiming normal, ReLU gain, fan_in, zero biases, the output layer
    included), or `torch-default`, PyTorch's own layer init as the modules were built (`kaiming_uniform_(a=√5)`
    weights, about 2.45x smaller, uniform biases)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    if init in (DEFAULT_INIT, KAIMING_NORMAL):
        kaiming_init_(module, normal=init == KAIMING_NORMAL)


class HiddenLayer(nn.Module):
    """Linear -> (LayerNorm) -> activation; the activation's output holds the units."""

    def __init__(self, in_features: int, out_features: int, activation: str, layer_norm: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features) if layer_norm else nn.Identity()
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act(norm(linear(x)))."""
        return self.act(self.norm(self.linear(x)))


class MLP(nn.Module):
    """Fully connected net (SPEC S6): input (B, ...) flattened -> widths -> n_classes logits."""

    def __init__(
        self,
        in_features: int = 64,
        widths: tuple[int, ...] = (64, 64, 64),
        n_classes: int = 10,
        activation: str = "relu",
        layer_norm: bool = False,
        init: str = DEFAULT_INIT,
    ):
        super().__init__()
        dims = [in_features, *widths]
        self.layers = nn.ModuleList(
            HiddenLayer(a, b, activation, layer_norm) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = nn.Linear(dims[-1], n_classes)
        self.layer_norm = layer_norm
        init_weights_(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(B, n_classes)` of the flattened input."""
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        """The unit layers: each hidden layer's activation with its producer and consumer."""
        specs = []
        for i in range(len(self.layers)):
            consumer = f"layers.{i + 1}.linear" if i + 1 < len(self.layers) else "head"
            if self.layer_norm:
                specs.append(UnitLayerSpec(
                    f"layers.{i}.act", producer=None, consumer=consumer,
                    producer_note=f"LayerNorm layers.{i}.norm mixes the outputs of layers.{i}.linear",
                    reset_producer=f"layers.{i}.linear", reset_norm=f"layers.{i}.norm",
                ))
            else:
                specs.append(UnitLayerSpec(f"layers.{i}.act", f"layers.{i}.linear", consumer))
        return specs


class ConvBlock(nn.Module):
    """Conv3x3 -> BatchNorm -> activation; one unit per output channel."""

    def __init__(self, in_channels: int, out_channels: int, activation: str, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act(bn(conv(x)))."""
        return self.act(self.bn(self.conv(x)))


class CNN(nn.Module):
    """Plain conv net: ConvBlocks, global average pool, Linear head."""

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32),
        n_classes: int = 10,
        activation: str = "relu",
        init: str = DEFAULT_INIT,
    ):
        super().__init__()
        dims = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ConvBlock(a, b, activation, stride=1 if i == 0 else 2)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dims[-1], n_classes)
        init_weights_(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: the blocks, global average pool, head."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.pool(x).flatten(1))

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        """The unit layers: each block's activation, read by the next conv or the head."""
        n = len(self.blocks)
        return [
            UnitLayerSpec(
                f"blocks.{i}.act", producer=None,
                consumer=f"blocks.{i + 1}.conv" if i + 1 < n else "head",
                producer_note=f"BatchNorm blocks.{i}.bn rescales the producer's output",
                reset_producer=f"blocks.{i}.conv", reset_norm=f"blocks.{i}.bn",
                consumer_norm=f"blocks.{i + 1}.bn" if i + 1 < n else None,
            )
            for i in range(n)
        ]


class BasicBlock(nn.Module):
    """ResNet basic block; its two activations are separate modules, so each is hookable."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = _activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))."""
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet (SPEC S6 in miniature): stem, stages of BasicBlocks, pool, Linear head."""

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] = RESNET_WIDTHS,
        blocks: tuple[int, ...] = (1,) * len(RESNET_WIDTHS),
        n_classes: int = 10,
        activation: str = "relu",
        init: str = DEFAULT_INIT,
    ):
        super().__init__()
        self.stem = ConvBlock(in_channels, widths[0], activation)
        stages, channels = [], widths[0]
        for s, (width, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
            stage = []
            for b in range(n_blocks):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(BasicBlock(channels, width, stride, activation))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, n_classes)
        init_weights_(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: stem, stages, global average pool, head."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.pool(x).flatten(1))

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        """The unit layers: the stem's and each block's activations, with notes on what rescales or reads them."""
        specs = [UnitLayerSpec(
            "stem.act", producer=None, consumer=None,
            producer_note="BatchNorm stem.bn rescales the producer's output",
            consumer_note="read by stages.0.0.conv1 and by a residual skip",
        )]
        names = [f"stages.{s}.{b}" for s, stage in enumerate(self.stages) for b in range(len(stage))]
        for k, block in enumerate(names):
            specs.append(UnitLayerSpec(
                f"{block}.act1", producer=None, consumer=f"{block}.conv2",
                producer_note=f"BatchNorm {block}.bn1 rescales the producer's output",
                reset_producer=f"{block}.conv1", reset_norm=f"{block}.bn1", consumer_norm=f"{block}.bn2",
            ))
            last = k + 1 == len(names)
            specs.append(UnitLayerSpec(
                f"{block}.act2", producer=None, consumer="head" if last else None,
                producer_note=f"residual add: {block}.bn2 output plus the skip",
                consumer_note="" if last else f"read by {names[k + 1]}.conv1 and by a residual skip",
            ))
        return specs


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; `heads` (an identity) sees the heads' outputs `(B, T, n_heads * d_head)`,
    the input of the output projection `proj`: one unit per head (SPEC S9)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.heads = nn.Identity()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of `x (B, T, d)`, its heads visible through `heads`."""
        qkv = self.qkv(x).unflatten(-1, (3, self.n_heads, self.d_head)).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return self.proj(self.heads(out.transpose(1, 2).flatten(2)))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear; the GELU's output, the input of `fc_out`, holds the MLP neurons (SPEC S9)."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_hidden)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fc_out(act(fc_in(x)))."""
        return self.fc_out(self.act(self.fc_in(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d_model: int, n_heads: int, d_hidden: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d_model), CausalSelfAttention(d_model, n_heads)
        self.ln2, self.mlp = nn.LayerNorm(d_model), FeedForward(d_model, d_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream: x + attn(ln1(x)), then x + mlp(ln2(x))."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Small causal language model (SPEC S9): token ids `(B, T)` -> next-token logits `(B, T, vocab)`.

    Learned token and position embeddings, pre-LayerNorm blocks with GELU MLPs, a final LayerNorm and an
    untied output layer. Unit layers per block: the MLP neurons `blocks.<i>.mlp.act` (producer `fc_in`,
    consumer `fc_out`: CBP resets them) and the attention heads `blocks.<i>.attn.heads` (consumer `proj`).
    """

    def __init__(self, vocab: int = 32, max_len: int = 16, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 mlp_ratio: int = 4, init: str = DEFAULT_INIT):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.zeros(1, max_len, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio * d_model) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        init_weights_(self, init)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits `(B, T, vocab)` of token ids `(B, T)`."""
        x = self.tokens(ids) + self.positions[:, :ids.size(1)]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        """The unit layers: each block's attention heads and MLP activation."""
        specs = []
        for i, block in enumerate(self.blocks):
            specs.append(UnitLayerSpec(
                f"blocks.{i}.attn.heads", producer=None, consumer=f"blocks.{i}.attn.proj",
                producer_note="attention mixes the value projection over positions", heads=block.attn.n_heads))
            specs.append(UnitLayerSpec(f"blocks.{i}.mlp.act", f"blocks.{i}.mlp.fc_in", f"blocks.{i}.mlp.fc_out"))
        return specs


@register_model
def mlp(**kwargs: object) -> MLP:
    """MLP with relu/silu/leaky_relu/tanh and optional LayerNorm."""
    return MLP(**_tuples(kwargs))


@register_model
def cnn(**kwargs: object) -> CNN:
    """Small CNN with BatchNorm."""
    return CNN(**_tuples(kwargs))


@register_model
def resnet(**kwargs: object) -> ResNet:
    """Small ResNet with BatchNorm and identity/projection shortcuts."""
    return ResNet(**_tuples(kwargs))


@register_model
def transformer(**kwargs: object) -> Transformer:
    """Small causal transformer language model (pre-LayerNorm, GELU MLP, learned positions)."""
    return Transformer(**kwargs)


def _tuples(kwargs: dict[str, object]) -> dict[str, object]:
    """JSON gives lists where the constructors take tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def model_family(name: str, kwargs: dict[str, object]) -> str:
    """Short family label for reports: architecture, activation, normalisation, and an init other than the
    default (SPEC S6), e.g. `mlp-silu-torch-default`."""
    if name == "transformer":
        init = kwargs.get("init", DEFAULT_INIT)
        return f"transformer-d{kwargs.get('d_model', 64)}-l{kwargs.get('n_layers', 2)}" + (
            f"-{init}" if init != DEFAULT_INIT else "")
    parts = [name, str(kwargs.get("activation", "relu"))]
    if kwargs.get("layer_norm"):
        parts.append("ln")
    if name in ("cnn", "resnet"):
        parts.append("bn")
    if kwargs.get("init", DEFAULT_INIT) != DEFAULT_INIT:
        parts.append(str(kwargs["init"]))
    return "-".join(parts)
