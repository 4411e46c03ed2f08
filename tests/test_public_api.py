from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import gcl_local
import gcl_local.asyncio
import gcl_local.sync

REPO = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("api", ["gcl_local.sync", "gcl_local.asyncio"])
def test_a_fresh_processs_first_call_imports_nothing(tmp_path, api: str) -> None:
    """The embedded store comes with the API: loaded by the first call, apsw cost a fresh process's
    first rate-limited call 10 ms alone and 100-200 ms with four processes starting together (bench
    scenario 6 ran 3 % behind its schedule). The PostgreSQL driver is still left for a URL."""
    db = str(tmp_path / "gcl.db")
    gcl_local.create_limit("r", 5, slot_decay_per_second=20, db=db)
    code = (
        f"import sys, asyncio; import {api} as api\n"
        "before = set(sys.modules)\n"
        "call = api.rate_limit('r', db=sys.argv[1])\n"
        "if asyncio.iscoroutine(call):\n    asyncio.run(call)\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(('gcl_local', 'apsw', 'psycopg'))))\n"
        "print('psycopg' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-2:] == ["[]", "False"]


def _modules() -> list[str]:
    """Every module of the package (subpackages too), but ``__main__``, which runs gcl when imported."""
    found = pkgutil.walk_packages(gcl_local.__path__, "gcl_local.")
    return sorted(["gcl_local", *(m.name for m in found if not m.name.endswith(".__main__"))])


def _defined_names(module: ModuleType) -> set[str]:
    """Public names a module's own top-level code binds (not imports): functions, classes, constants.

    ``TYPE_CHECKING = False`` (a cheap stand-in for typing's) and type variables are no exports.
    """
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                value = node.value
                if isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("TypeVar", "ParamSpec"):
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return {n for n in names if not n.startswith("_") and n != "TYPE_CHECKING"}


@pytest.mark.parametrize("name", _modules())
def test_all_of_every_module_is_what_it_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), "listed twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ lists names it does not have"
    unlisted = sorted(_defined_names(module) - set(exported))
    assert unlisted == [], f"{name} defines public names missing from its __all__"


def test_the_top_level_exports_the_api_and_its_records_only() -> None:
    """The API and the records it returns (a Limit carries Leases, Waiters and its Stats); not the
    test clock or the store, which live in their own modules."""
    for name in ("FakeClock", "Store"):
        assert name not in gcl_local.__all__
        with pytest.raises(AttributeError):
            getattr(gcl_local, name)
    assert {"Lease", "Limit", "Stats", "Waiter"} <= set(gcl_local.__all__)
    assert gcl_local.__all__ == sorted(gcl_local.__all__)


def test_the_version_is_written_once(tmp_path: Path) -> None:
    """pyproject.toml reads it from gcl_local.__version__; the installed metadata and gcl --version agree."""
    import importlib.metadata

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gcl_local.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", gcl_local.__version__)
    assert importlib.metadata.version("gcl_local") == gcl_local.__version__
    done = subprocess.run(
        [sys.executable, "-m", "gcl_local", "--db", str(tmp_path / "x.db"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout == f"gcl {gcl_local.__version__}\n"
