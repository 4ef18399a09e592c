"""Example models for the README and benchmarks: `--model examples.resnet18:resnet18` from the repository root."""
