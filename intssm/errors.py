"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class IntssmError(Exception):
    """Bad input (file, shape, bit width, dataset, ...) described in one human-readable line."""


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM after saving what it had: the message says what was kept."""
