"""The one exception type samplerkit raises for bad input or an impossible request."""


class SamplerkitError(Exception):
    """A user-facing error: the message says what was wrong and what to do.

    The command line prints ``str(err)`` as one line and exits non-zero. ``names``: the Python option
    names the message lists (the command line shows each as its flag, even one that is also a plain
    word such as ``disc``).
    """

    def __init__(self, *args, names: tuple[str, ...] = ()):
        super().__init__(*args)
        self.names = tuple(names)


class Interrupted(SamplerkitError):
    """A long run stopped by the user (Ctrl-C); the message says what was saved and how to resume.

    The command line prints it as one line and exits 130.
    """


class DamagedFileError(SamplerkitError):
    """A file that is evidently truncated or corrupted; the message gives its size and how to get
    it again (so callers add no advice of their own)."""
