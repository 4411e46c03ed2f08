"""``python -m gcl_local`` runs the ``gcl`` command."""

from __future__ import annotations

from ._cli import program

program()
