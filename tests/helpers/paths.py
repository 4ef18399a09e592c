"""Where things are, for every test wherever its file lives: the repository root, the bundled fixtures, and the
shared data folder beside the checkout (MNIST IDX files, the CIFAR-10 archive; tests that need them skip
without them)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
MNIST = SHARED_DATA / "mnist"
CIFAR = SHARED_DATA / "cifar10" / "cifar10-images-jpg.tar.gz"
