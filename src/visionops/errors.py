"""The error a user can act on. Every package's own errors derive from it (MonitorError,
the training stages' errors); entry points print its message on one line and exit 2."""


class VisionopsError(Exception):
    """Base class: the message says what went wrong and what to do."""
