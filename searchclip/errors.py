"""Errors that searchclip raises for problems a user can fix.

The CLI prints any `SearchclipError` as one line and exits with its `exit_code`,
so messages must name the value at fault and the next step.
"""


class SearchclipError(Exception):
    """Base class of every error meant for the user rather than a traceback."""

    exit_code = 1


class UsageError(SearchclipError):
    """Invalid arguments or option combinations."""

    exit_code = 2


class ModelError(SearchclipError):
    """A model that cannot be found, downloaded or loaded."""


class InvalidIndexError(SearchclipError):
    """An index folder that is missing, inconsistent or built differently."""


class IndexBusyError(SearchclipError):
    """Another process holds the index's write lock."""


class ImageError(SearchclipError):
    """An image that cannot be read or decoded."""

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
