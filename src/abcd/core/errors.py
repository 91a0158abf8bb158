"""Errors that mean "the input is wrong" (not a bug in this code): the only ones ``cli.run`` prints as one line.

Each subclass also derives from the built-in a caller would expect (a missing file is a
``FileNotFoundError``), so code that catches the built-in keeps working.
"""


class UserError(Exception):
    """Bad params, files or environment; the message names the thing and what was expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder a stage reads does not exist (usually: an earlier stage has not run)."""


class InvalidFileError(UserError, ValueError):
    """A file exists but its content is not what was expected (header, labels, format, other classes)."""


class DiskFullError(UserError, OSError):
    """The device an output is written to is full (or over quota): the message names the output."""
