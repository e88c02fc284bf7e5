"""The one exception type samplerkit raises for bad input or an impossible request."""


class SamplerkitError(Exception):
    """A user-facing error: the message says what was wrong and what to do.

    The command line prints ``str(err)`` as one line and exits non-zero.
    """
