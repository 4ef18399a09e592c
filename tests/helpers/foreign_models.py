"""Models written the way other people write them, for `--model helpers.foreign_models:<factory>` in tests.

None declares its unit layers: resetassay must find them by tracing (resetassay.discovery.taps).
Every factory builds its weights from a seed, with BatchNorm statistics and affine parameters
away from their identity defaults so that BatchNorm matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _randomise_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded normal weights (scaled by fan-in) and non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one `self.relu` (in place) called twice, optional downsample."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNetTV(nn.Module):
    """torchvision-style ResNet in miniature: stem conv-bn-relu, layer1 (identity skip),
    layer2 (stride 2, 1x1 projection downsample), avgpool, flatten, fc. Input (B, 1, 8, 8)."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, int] = (4, 6), n_classes: int = 10,
                 flatten: str = "flatten"):
        super().__init__()
        a, b = widths
        self.flatten = flatten  # "flatten": torch.flatten(x, 1); "view": x.view(x.size(0), -1), as CIFAR repos do
        self.conv1 = nn.Conv2d(in_channels, a, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(a)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(a, a))
        projection = nn.Sequential(nn.Conv2d(a, b, 1, stride=2, bias=False), nn.BatchNorm2d(b))
        self.layer2 = nn.Sequential(BasicBlock(a, b, stride=2, downsample=projection))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(b, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1) if self.flatten == "view" else torch.flatten(x, 1)
        return self.fc(x)


class FunctionalMLP(nn.Module):
    """64 -> 12 -> 10 -> 8 -> classes; activations are calls in forward, no modules to hook."""

    def __init__(self, in_features: int = 64, widths: tuple[int, int, int] = (12, 10, 8), n_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, widths[0])
        self.fc2 = nn.Linear(widths[0], widths[1])
        self.fc3 = nn.Linear(widths[1], widths[2])
        self.head = nn.Linear(widths[2], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x.flatten(1)))
        h = self.fc2(h).relu()
        h = torch.tanh(self.fc3(h))
        return self.head(h)


class ListMLP(nn.Module):
    """64 -> 12 (ReLU) -> 9 (SiLU) -> classes, every layer an entry of one nn.ModuleList."""

    def __init__(self, in_features: int = 64, widths: tuple[int, int] = (12, 9), n_classes: int = 10):
        super().__init__()
        a, b = widths
        self.layers = nn.ModuleList([
            nn.Linear(in_features, a), nn.ReLU(), nn.Linear(a, b), nn.SiLU(), nn.Linear(b, n_classes),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x


class GatedMLP(nn.Module):
    """Untraceable: which branch runs depends on the data; `self.act` is called twice."""

    def __init__(self, in_features: int = 64, width: int = 8, n_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x.flatten(1)))
        if h.sum() > 0:
            h = h * 2
        return self.head(self.act(self.fc2(h)))


class ShapeBranchMLP(nn.Module):
    """One `self.relu` called twice, behind `if x.dim() != 2:`, which fx cannot trace (`branch=False`:
    the same forward without the test, which fx traces). Inputs (B, 64) skip the branch; other shapes
    take it and call `self.relu` a third time."""

    def __init__(self, in_features: int = 64, widths: tuple[int, int] = (7, 5), n_classes: int = 4,
                 branch: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, widths[0])
        self.fc2 = nn.Linear(widths[0], widths[1])
        self.head = nn.Linear(widths[1], n_classes)
        self.relu = nn.ReLU()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch and x.dim() != 2:
            x = self.relu(x.flatten(1))
        h = self.relu(self.fc1(x))
        h = self.relu(self.fc2(h))
        return self.head(h)


def shape_branch_mlp(seed: int = 0, **kwargs: object) -> ShapeBranchMLP:
    """A seeded MLP with a shape test in forward and a reused ReLU module."""
    return _randomise_(ShapeBranchMLP(**kwargs), seed)


def resnet_tv(seed: int = 0, **kwargs: object) -> ResNetTV:
    """A seeded torchvision-style ResNet."""
    return _randomise_(ResNetTV(**kwargs), seed)


def functional_mlp(seed: int = 0, **kwargs: object) -> FunctionalMLP:
    """A seeded MLP with functional activations."""
    return _randomise_(FunctionalMLP(**kwargs), seed)


def list_mlp(seed: int = 0, **kwargs: object) -> ListMLP:
    """A seeded MLP kept in an nn.ModuleList."""
    return _randomise_(ListMLP(**kwargs), seed)


def gated_mlp(seed: int = 0, **kwargs: object) -> GatedMLP:
    """A seeded MLP fx cannot trace, with a reused ReLU module."""
    return _randomise_(GatedMLP(**kwargs), seed)


@dataclass
class Prediction:
    """An output object in the style of Hugging Face's ModelOutput: logits and hidden features."""

    features: torch.Tensor
    logits: torch.Tensor


class WrappedOutputMLP(FunctionalMLP):
    """FunctionalMLP whose forward returns its logits wrapped as `wrap` says: "tensor" (plain), "tuple"
    (logits, features), "dict" {"features", "logits"}, "object" (a Prediction), "nested" {"out": (features, logits)},
    "none" (a dict without tensors)."""

    def __init__(self, wrap: str = "tensor", **kwargs: object):
        super().__init__(**kwargs)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> object:
        features = x.flatten(1)[:, :3]
        logits = super().forward(x)
        return {"tensor": logits, "tuple": (logits, features), "dict": {"features": features, "logits": logits},
                "object": Prediction(features, logits), "nested": {"out": (features, logits)},
                "none": {"n": 1}}[self.wrap]


def wrapped_output_mlp(seed: int = 0, wrap: str = "tensor", **kwargs: object) -> WrappedOutputMLP:
    """A seeded FunctionalMLP returning its logits wrapped (same weights for every `wrap`)."""
    return _randomise_(WrappedOutputMLP(wrap, **kwargs), seed)


class PredictOnlyFFNN(nn.Module):
    """The loss-of-plasticity repository's `DeepFFNN` shape: layers in a ModuleList, `predict` and no `forward`."""

    def __init__(self, n_in: int = 64, hidden: int = 32, n_out: int = 10):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, n_out)])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def predict_only_ffnn(seed: int = 0, **kwargs: object) -> PredictOnlyFFNN:
    return _randomise_(PredictOnlyFFNN(**kwargs), seed)


class NanoCausalSelfAttention(nn.Module):
    """nanoGPT's attention: one fused `c_attn` for q, k, v, heads split by view/transpose, flash SDPA, `c_proj`."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # noqa: N806 (nanoGPT's names)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoMLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = NanoCausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = NanoMLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """karpathy's nanoGPT `model.py` in miniature: `forward(idx, targets=None)` returns `(logits, loss)`, and
    without targets the logits of the last position only, `(B, 1, V)`; `lm_head` tied to `wte`."""

    def __init__(self, vocab_size: int = 16, block_size: int = 12, n_layer: int = 2, n_head: int = 2,
                 n_embd: int = 16):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd), drop=nn.Dropout(0.0),
            h=nn.ModuleList([NanoBlock(n_embd, n_head) for _ in range(n_layer)]), ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # inference-time mini-optimization: only the last position
            loss = None
        return logits, loss


def nano_gpt(seed: int = 0, **kwargs: object) -> NanoGPT:
    torch.manual_seed(seed)
    return NanoGPT(**kwargs).eval()


class FullLogits(nn.Module):
    """The wrapper that gives nanoGPT's logits at every position: its forward calls the model with targets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx, targets=idx)[0]


def nano_gpt_full(seed: int = 0, **kwargs: object) -> FullLogits:
    return FullLogits(nano_gpt(seed, **kwargs)).eval()


class OpaqueAttention(nn.Module):
    """Self-attention whose head count is kept under a name resetassay does not know (`self.h`)."""

    def __init__(self, n_embd: int = 16, h: int = 2):
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # noqa: N806
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))


class OpaqueAttentionNet(nn.Module):
    """Tokens -> embedding -> attention (heads not recognisable) -> MLP -> logits."""

    def __init__(self, vocab_size: int = 16, n_embd: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.attention = OpaqueAttention(n_embd)
        self.fc = nn.Linear(n_embd, 32)
        self.act = nn.ReLU()
        self.out = nn.Linear(32, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        x = x + self.attention(x)
        return self.out(self.act(self.fc(x)))


def opaque_attention_net(seed: int = 0, **kwargs: object) -> OpaqueAttentionNet:
    torch.manual_seed(seed)
    return OpaqueAttentionNet(**kwargs).eval()
