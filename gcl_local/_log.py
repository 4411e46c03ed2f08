"""The ``gcl_local`` logger, imported only when something is logged (``logging`` is slow to import),
and a cheap jitter (``random`` is slow to import too)."""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from typing import Any


def _logger() -> Any:
    import logging

    return logging.getLogger("gcl_local")


def debug(message: str, *args: object, **kwargs: Any) -> None:
    _logger().debug(message, *args, **kwargs)


def warning(message: str, *args: object) -> None:
    _logger().warning(message, *args)


def error(message: str, *args: object) -> None:
    _logger().error(message, *args)


def jitter() -> float:
    """A number in [0, 1) that differs between processes and calls: enough to spread retries apart."""
    mixed = (time.perf_counter_ns() * 0x9E3779B1 + os.getpid() * 0x85EBCA77) & 0xFFFFFFFF
    return mixed / 0x100000000


__all__ = ["debug", "error", "jitter", "warning"]
