"""What the hot path takes from the standard library, without the imports that cost every start.

``gcl run`` is started by cron many times a minute, and ``import gcl_local.sync`` by every worker:
each module below cost every one of those starts a few milliseconds (issue 11). mypy reads the real
ones (it takes any name ``TYPE_CHECKING`` as true); at run time:

- :class:`NamedTuple` makes the class that typing's makes, with ``collections.namedtuple``: fields,
  defaults, docstring, methods and properties; a plain tuple subclass that pickles by its name.
  ``typing`` costs 5 ms to import, and its ``NamedTuple`` turns each field's annotation into a
  ``ForwardRef`` with ``compile()``: the package's records cost about 10 ms more. Here
  ``__annotations__`` keep the annotations as written (strings: ``from __future__ import
  annotations``), which ``typing.get_type_hints`` reads as it reads typing's ``ForwardRef``.
- :data:`Protocol` is ``object``: at run time a protocol is only documentation (nothing here checks
  ``isinstance`` against one); mypy checks that each backend fits it.
- :mod:`signal` is the C module ``_signal``, with the same functions and constants: ``signal``
  imports enum to wrap them in enums (8 ms with it, 1 ms when ``re`` has imported enum already).
- :class:`datetime` and :class:`timezone` come from the C module ``_datetime``: before Python 3.12,
  ``datetime`` defines its whole pure-Python version first, then replaces it with these very classes
  (3 ms). Modules that only display times import ``datetime`` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's, which this module is here to spare
if TYPE_CHECKING:
    import signal
    from datetime import datetime, timezone
    from typing import NamedTuple, Protocol
else:
    import _signal as signal
    from collections import namedtuple

    try:
        from _datetime import datetime, timezone
    except ImportError:  # a Python without it
        from datetime import datetime, timezone

    Protocol = object

    class _NamedTupleMeta(type):
        def __new__(cls, typename, bases, namespace):
            fields = namespace.get("__annotations__", {})
            defaults = [namespace[name] for name in fields if name in namespace]
            if any(name not in namespace for name in list(fields)[len(fields) - len(defaults) :]):
                raise TypeError(f"{typename}: a field without a default follows one with a default")
            made = namedtuple(typename, fields, defaults=defaults, module=namespace["__module__"])
            made.__annotations__ = made.__new__.__annotations__ = dict(fields)
            for key, value in namespace.items():  # as typing: the docstring, methods, __qualname__
                if key not in fields and key not in ("__module__", "__annotations__"):
                    setattr(made, key, value)
            return made

    # ``class Lease(NamedTuple)`` calls _NamedTupleMeta, which returns the namedtuple (as typing's does).
    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})

__all__ = ["NamedTuple", "Protocol", "datetime", "signal", "timezone"]
