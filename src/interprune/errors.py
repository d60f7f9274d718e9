"""The one exception type users see: a message that names the problem and the fix."""


class InterpruneError(Exception):
    """Bad input, caught before any work is done; the CLI prints it on one line and exits 2."""


def first_line(err: BaseException) -> str:
    """An exception as one line of at most 300 characters, for one-line errors."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return (text or type(err).__name__)[:300]
