"""The base of errors that mean "the input is wrong" (not a bug in this code)."""


class UserError(Exception):
    """Bad params, files or environment; the message names the thing and what was expected."""
