"""The one exception type users see: a message that names the problem and the fix."""


class InterpruneError(Exception):
    """Bad input, caught before any work is done; the CLI prints it on one line and exits 2."""
