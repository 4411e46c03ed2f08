from __future__ import annotations

import ast
import importlib
import os
import pickle
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType

import pytest

import gcl_local
import gcl_local.asyncio
import gcl_local.sync
from gcl_local._stdlib import NamedTuple

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


HOT_PATH_SPARES = ("datetime", "enum", "re", "signal", "typing")
"""Modules that the hot paths must not import (issue 11: the cold start of ``gcl run``)."""


def _modules_loaded(tmp_path: Path, code: str, *args: str) -> list[str]:
    """Which of :data:`HOT_PATH_SPARES` a fresh process running *code* loaded (the last line it prints).

    It runs in *tmp_path*, so that it imports the installed package (as ``gcl`` does), not the source tree.
    """
    code += f"\nprint(sorted(m for m in {HOT_PATH_SPARES!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60
    )
    return [done.stdout, done.stderr, done.stdout.splitlines()[-1]]


def _cli(argv: list[str]) -> str:
    return f"import sys; from gcl_local._cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def test_the_hot_paths_import_no_typing_re_enum_signal_or_datetime(tmp_path: Path) -> None:
    """Nor what else a start would pay for (:data:`HOT_PATH_SPARES`): ``gcl run``, ``acquire``,
    ``release`` and ``rate-limit`` (as cron starts them), and the sync API from its import to a held slot."""
    db = str(tmp_path / "gcl.db")
    gcl_local.create_limit("job", 1, db=db)
    gcl_local.create_limit("r", 5, slot_decay_per_second=20, db=db)
    acquire = ["--db", db, "acquire", "job", "--holder-pid", str(os.getpid())]
    out, err, loaded = _modules_loaded(tmp_path, _cli(acquire))
    assert loaded == "[]", err
    lease_id = out.splitlines()[0]
    for argv in (["release", lease_id], ["run", "job", "--", "true"], ["rate-limit", "r"]):
        _, err, loaded = _modules_loaded(tmp_path, _cli(["--db", db, *argv]))
        assert (argv[0], loaded) == (argv[0], "[]"), err
    assert gcl_local.read_limit("job", db=db).active_slots == 0  # each did its work
    code = "import sys, gcl_local.sync as api\nwith api.concurrency('job', db=sys.argv[1]):\n    pass"
    _, err, loaded = _modules_loaded(tmp_path, code, db)
    assert loaded == "[]", err


class _TypingRecord(typing.NamedTuple):
    """A record."""

    name: str
    size: int | None
    """The size."""
    tags: tuple[str, ...] = ()
    label: str = "x"

    @property
    def twice(self) -> int:
        return 2 * (self.size or 0)

    def describe(self, prefix: str) -> str:
        return f"{prefix}{self.name}"


class _Record(NamedTuple):
    """A record."""

    name: str
    size: int | None
    """The size."""
    tags: tuple[str, ...] = ()
    label: str = "x"

    @property
    def twice(self) -> int:
        return 2 * (self.size or 0)

    def describe(self, prefix: str) -> str:
        return f"{prefix}{self.name}"


def test_records_are_what_typings_namedtuple_makes() -> None:
    """The package's records are made without typing (``gcl_local._stdlib``): they must not differ."""
    ours, theirs = _Record("a", 3), _TypingRecord("a", 3)
    assert type(ours).__mro__[1:] == type(theirs).__mro__[1:] == (tuple, object)
    for attribute in ("_fields", "_field_defaults", "__doc__", "__match_args__", "__module__"):
        assert getattr(_Record, attribute) == getattr(_TypingRecord, attribute), attribute
    assert _Record.__qualname__ == "_Record"
    assert ours == theirs == ("a", 3, (), "x")
    assert repr(ours) == repr(theirs).replace("_TypingRecord", "_Record")
    assert (ours.twice, ours.describe("-"), ours._asdict()) == (theirs.twice, theirs.describe("-"), theirs._asdict())
    assert ours._replace(label="y") == theirs._replace(label="y")
    assert _Record._make(["b", None, (), "z"]) == _TypingRecord._make(["b", None, (), "z"])
    assert pickle.loads(pickle.dumps(ours)) == ours
    assert type(pickle.loads(pickle.dumps(ours))) is _Record
    assert typing.get_type_hints(_Record) == typing.get_type_hints(_TypingRecord)
    with pytest.raises(TypeError):
        _Record("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="without a default follows"):

        class _Wrong(NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]


def test_the_public_records_look_right() -> None:
    """``Lease``, ``Limit``, ``Stats`` and ``Waiter`` as users see them: docs, fields, pickling."""
    lease = gcl_local.Lease("1-x", 1, ("job",), 1)
    assert repr(lease).startswith("Lease(id='1-x', token=1, names=('job',), slots=1, pid=None")
    assert pickle.loads(pickle.dumps(lease)) == lease
    for record in (gcl_local.Lease, gcl_local.Limit, gcl_local.Stats, gcl_local.Waiter):
        assert record.__module__ == "gcl_local._model"
        assert record.__doc__ and not record.__doc__.startswith(record.__name__ + "(")
        assert isinstance(record._fields, tuple) and issubclass(record, tuple)
        assert set(typing.get_type_hints(record)) == set(record._fields)


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

    ``TYPE_CHECKING = False`` (a cheap stand-in for typing's), type variables and what is bound only
    under ``if TYPE_CHECKING:`` are no exports.
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
            elif isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                visit(node.orelse)  # what only mypy sees (type aliases) is no export
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
