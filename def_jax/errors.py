"""Errors that are the user's to fix: the command line prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (file, field or value): the message names it and says what was expected."""
