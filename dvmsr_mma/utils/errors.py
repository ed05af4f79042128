"""The package's own exceptions, which the CLI turns into one line and an exit code, without a traceback.

:class:`OptionError` and its kin mean "the user's input is wrong"; :class:`TrainingStopped` and its kin say why a
training run ended early (a loss or gradient that is not finite, a SIGTERM/SIGINT), logged where it was found.
A leaf module: every subpackage may import it.
"""
import signal
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

class TrainingStopped(RuntimeError):
    """The run stopped on purpose before ``total_iter``; ``exit_code`` is what ``basicsr train`` returns."""

    exit_code = 1


class TrainingDiverged(TrainingStopped):
    """A non-finite loss or gradient (``train.nan_policy``); nothing of the bad step was saved."""


class TrainingInterrupted(TrainingStopped):
    """A SIGTERM/SIGINT: the state of the finished iteration was saved; exit code 128 + the signal number, as a
    shell reports a process ended by that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.signal_name = signal.Signals(signum).name
