"""The error a user can act on: one line naming the file or flag and the fix."""


class BadInputError(ValueError):
    """Bad input (missing file, unknown name, impossible size); the CLI exits with code 2."""
