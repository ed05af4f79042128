"""Errors that mean "the user's input is wrong": the CLI prints them as one line, without a traceback."""


class OptionError(ValueError):
    """An option file or option value that cannot work; the message names the option and how to fix it."""
