"""Example models for the docs and benchmarks: `--model examples.resnet18:resnet18` from the repository root."""
