"""Errors that mean "the user's input is wrong": the CLI prints them as one line, without a traceback."""
from typing import Dict, Type


class OptionError(ValueError):
    """An option file or option value that cannot work; the message names the option and how to fix it."""


class RegistryKeyError(OptionError, KeyError):
    """A name that is not in a BasicSR registry: a :class:`OptionError` with the "did you mean" hint, and the
    ``KeyError`` BasicSR's ``Registry.get`` raises, so code that catches ``KeyError`` keeps working."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return BaseException.__str__(self)


_AS: Dict[Type[BaseException], Type[OptionError]] = {KeyError: RegistryKeyError}


def option_error_as(documented: Type[BaseException], message: str) -> OptionError:
    """An :class:`OptionError` that is also ``documented``, the exception BasicSR raises for the same input (a
    ``NotImplementedError`` for an unknown optimizer, a ``ValueError`` for an unknown I/O backend...), so that
    callers catching BasicSR's documented exception still catch it."""
    if issubclass(OptionError, documented):
        return OptionError(message)
    if documented not in _AS:
        _AS[documented] = type(f'Option{documented.__name__}', (OptionError, documented),
                               {'__doc__': f'An OptionError that is also a {documented.__name__}.',
                                '__str__': RegistryKeyError.__str__, '__module__': __name__})
    return _AS[documented](message)
