"""Why a training run ended early: a loss or gradient that is not finite, a SIGTERM/SIGINT.

A leaf module. The reason is logged (one line) where it is found; ``basicsr train`` turns the exception into its
exit code without a traceback.
"""
import signal


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
