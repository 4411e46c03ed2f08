from __future__ import annotations

import subprocess
import sys

import gcl_local
import gcl_local.asyncio
import gcl_local.sync


def test_every_public_name_resolves() -> None:
    for name in gcl_local.__all__:
        assert getattr(gcl_local, name) is not None, name
    assert sorted(dir(gcl_local)) == sorted(gcl_local.__all__)


def test_errors_share_one_root_and_the_standard_bases() -> None:
    assert issubclass(gcl_local.AcquireConcurrencySlotTimeoutError, gcl_local.ConcurrencySlotAcquisitionError)
    assert issubclass(gcl_local.AcquireConcurrencySlotTimeoutError, TimeoutError)
    assert issubclass(gcl_local.LimitNotFoundError, LookupError)
    assert issubclass(gcl_local.InvalidLimitError, ValueError)
    for name in gcl_local.__all__:
        value = getattr(gcl_local, name)
        if isinstance(value, type) and issubclass(value, Exception) and not issubclass(value, Warning):
            assert issubclass(value, gcl_local.GclError), name


def test_sync_and_async_mirror_prefect() -> None:
    assert gcl_local.concurrency is gcl_local.sync.concurrency
    assert gcl_local.rate_limit is gcl_local.sync.rate_limit
    assert callable(gcl_local.asyncio.concurrency)
    assert callable(gcl_local.asyncio.rate_limit)


def test_the_hot_cli_path_imports_neither_typer_nor_tabulate(tmp_path) -> None:
    """Nor what the viewers use: rich (gcl top), http.server (gcl serve), the metrics module."""
    code = (
        "import sys; from gcl_local._cli import main\n"
        "try:\n    main(['--db', sys.argv[1], 'run', '--strict', 'missing', '--', 'true'])\n"
        "except SystemExit:\n    pass\n"
        "viewers = ('typer', 'tabulate', 'click', 'rich', 'http', 'socketserver', 'webbrowser')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in viewers\n"
        "             or m in ('gcl_local._metrics', 'gcl_local._top', 'gcl_local._serve', 'gcl_local._serve_page')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "gcl.db")], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
