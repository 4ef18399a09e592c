"""`python -m resetassay ...`: the command line, also as torchrun launches it (`torchrun ... -m resetassay run`)."""

from resetassay.cli import app

if __name__ == "__main__":
    app(prog_name="resetassay")
