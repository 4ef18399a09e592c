"""`python -m resetassay.cli ...`: the command line."""

from resetassay.cli.commands import main

if __name__ == "__main__":
    main()
