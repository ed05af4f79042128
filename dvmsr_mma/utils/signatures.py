"""Whether a constructor takes the arguments an option file gives it, said in one line with the arguments it does
take: shared by the option schema (training) and ``basicsr infer`` / ``export`` / ``lam`` (tools)."""
import difflib
import inspect
from typing import Any, Callable, Mapping, Tuple

__all__ = ['signature_parameters', 'network_arguments_problem']


def signature_parameters(cls: Callable) -> Tuple[Mapping[str, inspect.Parameter], bool]:
    """The named constructor parameters of ``cls``, and whether it takes ``**kwargs`` too (or has no signature)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}, True
    named = {name: p for name, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def network_arguments_problem(arch: str, cls: Callable, kwargs: Mapping[str, Any]) -> str:
    """Why ``cls(**kwargs)`` would raise a ``TypeError`` (an unknown or a missing argument), said with the
    arguments ``arch`` takes; '' when it would not."""
    params, any_kwargs = signature_parameters(cls)
    takes = f'{arch} takes {", ".join(params) or "no arguments"}'
    for name in kwargs:
        if name not in params and not any_kwargs:
            close = difflib.get_close_matches(str(name), list(params), n=1, cutoff=0.8)
            hint = f' (did you mean {close[0]}?)' if close else ''
            return f'{arch} got an unexpected argument {name}{hint}; {takes}'
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in kwargs]
    if missing:
        return f'{arch} needs {", ".join(missing)} (not set); {takes}'
    return ''
