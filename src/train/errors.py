"""Errors a user can act on. Entry points print their message on one line and exit non-zero."""


class VisionopsError(Exception):
    """Base class: the message says what went wrong and what to do."""


class DataValidationError(VisionopsError):
    pass
