"""Typed access to the behaviour catalogue, ``spec/behaviours.toml``.

The catalogue lists every observable behaviour that a distref backend must
show, one ``[[behaviour]]`` table each.  The conformance suite keys its
scenarios by behaviour ID, and its reports are tables of those IDs against
backends, so the file must stay well formed.  :func:`load_behaviours` reads
it (as package data of :mod:`spec`) and checks it strictly.  Any problem
raises :class:`CatalogueError` naming the entry and what is wrong with it.

Every table has exactly these keys:

``id``
    Stable identifier ``<api>.<kebab-case-rule>``, unique in the file.
``api``
    The Python API name the behaviour concerns.
``statement``
    One normative sentence.
``source``
    Where the behaviour comes from (seed section, julia-semantics section).
``issue``
    The issue number that implements it.
``not_implemented``
    Backends (such as ``"ref"`` or ``"sim"``) that do not implement it yet.

and may have:

``tests``
    pytest node IDs (``"tests/test_x.py::test_y"``) that verify the
    behaviour where no scenario can observe it through the API.  A list
    names tests of ``ref`` (:data:`DEFAULT_TESTED_BACKEND`); a table keyed
    by backend names each backend's own, ``tests = { ref = [...], sim =
    [...] }``.  A backend the entry marks not implemented cannot also have
    tests that show it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

__all__ = [
    "CATALOGUE_FILE",
    "DEFAULT_TESTED_BACKEND",
    "ID_PATTERN",
    "Behaviour",
    "CatalogueError",
    "load_behaviours",
    "parse_behaviours",
]

#: Name of the catalogue file inside the ``spec`` package.
CATALOGUE_FILE = "behaviours.toml"

#: What a behaviour ID must look like: ``<api>.<kebab-case-rule>``.
ID_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z0-9]+(-[a-z0-9]+)*$")

#: The backend whose tests a bare ``tests = [...]`` list names.
DEFAULT_TESTED_BACKEND = "ref"


def _no_tests() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({})


_PACKAGE = __name__.rpartition(".")[0] or "spec"

_STRING_KEYS = ("id", "api", "statement", "source")
_KEYS = frozenset((*_STRING_KEYS, "issue", "not_implemented"))
#: Keys an entry may carry or leave out.
_OPTIONAL_KEYS = frozenset({"tests"})


class CatalogueError(ValueError):
    """The behaviour catalogue is malformed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One catalogued behaviour.

    Attributes mirror the keys of a ``[[behaviour]]`` table; see the module
    docstring for their meaning.
    """

    id: str
    api: str
    statement: str
    source: str
    issue: int
    not_implemented: frozenset[str]
    #: pytest node IDs (relative to the repository) that verify the
    #: behaviour on ``ref`` where no scenario can observe it through the API.
    tests: tuple[str, ...] = ()
    #: Every backend's pytest node IDs, ``ref``'s included (read-only).
    tests_by_backend: Mapping[str, tuple[str, ...]] = field(
        default_factory=_no_tests, hash=False
    )

    def tests_for(self, backend: str) -> tuple[str, ...]:
        """The pytest node IDs that verify this behaviour on ``backend``."""
        found = self.tests_by_backend.get(backend)
        if found is None and backend == DEFAULT_TESTED_BACKEND:
            # Built by hand with ``tests`` alone: those are ref's.
            return self.tests
        return found or ()


def _where(index: int, table: dict[str, Any]) -> str:
    """Name entry ``index`` (1-based), with its ID when it has a usable one."""
    ident = table.get("id")
    if isinstance(ident, str) and ident:
        return f"behaviour #{index} ({ident!r})"
    return f"behaviour #{index}"


def _parse_entry(index: int, table: object) -> Behaviour:
    """Check one ``[[behaviour]]`` table and turn it into a :class:`Behaviour`."""
    if not isinstance(table, dict):
        raise CatalogueError(f"behaviour #{index}: expected a table, got {table!r}")
    where = _where(index, table)

    missing = sorted(_KEYS - table.keys())
    if missing:
        raise CatalogueError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(table.keys() - _KEYS - _OPTIONAL_KEYS)
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {', '.join(unknown)}")

    for key in _STRING_KEYS:
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            raise CatalogueError(f"{where}: {key} must be a non-empty string")

    ident: str = table["id"]
    if not ID_PATTERN.fullmatch(ident):
        raise CatalogueError(
            f"{where}: id must look like '<api>.<kebab-case-rule>' "
            f"(pattern {ID_PATTERN.pattern})"
        )

    issue = table["issue"]
    # bool is a subclass of int, but `issue = true` is certainly a mistake.
    if not isinstance(issue, int) or isinstance(issue, bool) or issue < 1:
        raise CatalogueError(f"{where}: issue must be a positive integer")

    backends = table["not_implemented"]
    if not isinstance(backends, list) or not all(
        isinstance(name, str) and name for name in backends
    ):
        raise CatalogueError(
            f"{where}: not_implemented must be a list of non-empty strings"
        )
    if len(set(backends)) != len(backends):
        raise CatalogueError(f"{where}: not_implemented lists a backend twice")

    by_backend = _parse_tests(where, table.get("tests", []))
    contradicted = sorted(by_backend.keys() & set(backends))
    if contradicted:
        raise CatalogueError(
            f"{where}: names tests for {', '.join(contradicted)} but marks it "
            "not implemented there; drop one or the other"
        )

    return Behaviour(
        tests=by_backend.get(DEFAULT_TESTED_BACKEND, ()),
        tests_by_backend=MappingProxyType(by_backend),
        id=ident,
        api=table["api"],
        statement=table["statement"],
        source=table["source"],
        issue=issue,
        not_implemented=frozenset(backends),
    )


def _parse_tests(where: str, tests: object) -> dict[str, tuple[str, ...]]:
    """``tests`` as a list (``ref``'s) or a table of lists keyed by backend."""
    if isinstance(tests, list):
        tests = {DEFAULT_TESTED_BACKEND: tests} if tests else {}
    if not isinstance(tests, dict):
        raise CatalogueError(
            f"{where}: tests must be a list of pytest node IDs, or a table of "
            "such lists keyed by backend (tests = { ref = [...], sim = [...] })"
        )
    by_backend: dict[str, tuple[str, ...]] = {}
    for backend, nodes in tests.items():
        if not backend.strip():
            raise CatalogueError(f"{where}: tests names an empty backend")
        if (
            not isinstance(nodes, list)
            or not nodes
            or not all(isinstance(node, str) and "::" in node for node in nodes)
        ):
            raise CatalogueError(
                f"{where}: tests for {backend!r} must be a non-empty list of "
                f"pytest node IDs ('file::test'), got {nodes!r}"
            )
        by_backend[backend] = tuple(nodes)
    return by_backend


def load_behaviours() -> tuple[Behaviour, ...]:
    """Read, validate and return the catalogue, in file order.

    Raises :class:`CatalogueError` if the file is not valid TOML, has
    anything besides ``[[behaviour]]`` tables at the top level, or if any
    entry lacks a key, has an unknown key, has a value of the wrong type, has
    a malformed ID, or repeats an ID used earlier.
    """
    resource = resources.files(_PACKAGE).joinpath(CATALOGUE_FILE)
    return parse_behaviours(resource.read_text(encoding="utf-8"))


def parse_behaviours(text: str) -> tuple[Behaviour, ...]:
    """Validate and return the behaviours of catalogue source ``text``.

    What :func:`load_behaviours` does with the shipped file; raises
    :class:`CatalogueError` the same way.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{CATALOGUE_FILE}: not valid TOML: {exc}") from exc

    extra = sorted(document.keys() - {"behaviour"})
    if extra:
        raise CatalogueError(
            f"{CATALOGUE_FILE}: unexpected top-level key(s) {', '.join(extra)}"
        )
    tables = document.get("behaviour", [])
    if not isinstance(tables, list):
        raise CatalogueError(
            f"{CATALOGUE_FILE}: 'behaviour' must be an array of tables"
        )

    behaviours: list[Behaviour] = []
    first_seen: dict[str, int] = {}
    for index, table in enumerate(tables, start=1):
        behaviour = _parse_entry(index, table)
        if behaviour.id in first_seen:
            raise CatalogueError(
                f"behaviour #{index} ({behaviour.id!r}): duplicate id, "
                f"first used by behaviour #{first_seen[behaviour.id]}"
            )
        first_seen[behaviour.id] = index
        behaviours.append(behaviour)
    return tuple(behaviours)
