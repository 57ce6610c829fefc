"""The one exception the command line turns into a one-line message."""


class UsageError(Exception):
    """A user mistake (a flag, a config key, a file) the command reports in one line.

    The message names the flag or file, what was received and what was
    expected; ``main`` prints ``fedjax-keras: error: <message>`` and exits 2.
    """
