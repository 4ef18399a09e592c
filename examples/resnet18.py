"""ResNet-18 with torchvision's architecture and state-dict keys, without torchvision (the worked example of
docs/guide/checkpoints.md, benchmarks/lesion_speed.py).

The layout follows torchvision.models.resnet18 — a 7x7/2 stem convolution with BatchNorm, one ReLU and a
3x3/2 max-pool; four stages of two BasicBlocks (64, 128, 256, 512 channels, stride 2 from the second
stage on, a 1x1 convolution + BatchNorm `downsample` where the shape changes); global average pooling;
one Linear `fc` — so a state dict saved from torchvision loads here and the other way round. As in
torchvision, each block calls one `self.relu` twice (after `bn1`, and after the residual add): nothing is
declared for resetassay, which finds the unit layers by tracing (`layer1.0.relu@0`, `layer1.0.relu@1`).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-bn-relu, conv3x3-bn, + the input (or its 1x1 projection), relu: the same `self.relu` twice."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += skip
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout for `num_classes` classes and RGB inputs of any size >= 32 x 32."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for stage, width in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if stage == 1 else 2
            self.add_module(f"layer{stage}", nn.Sequential(BasicBlock(channels, width, stride),
                                                           BasicBlock(width, width)))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, seed: int = 0) -> ResNet18:
    """A ResNet-18 with seeded random weights (torch's default initialisation, Kaiming-normal convolutions)."""
    torch.manual_seed(seed)
    return ResNet18(num_classes)
