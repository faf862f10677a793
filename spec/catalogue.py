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
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = [
    "CATALOGUE_FILE",
    "ID_PATTERN",
    "Behaviour",
    "CatalogueError",
    "load_behaviours",
]

#: Name of the catalogue file inside the ``spec`` package.
CATALOGUE_FILE = "behaviours.toml"

#: What a behaviour ID must look like: ``<api>.<kebab-case-rule>``.
ID_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z0-9]+(-[a-z0-9]+)*$")

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

    tests = table.get("tests", [])
    if not isinstance(tests, list) or not all(
        isinstance(node, str) and "::" in node for node in tests
    ):
        raise CatalogueError(
            f"{where}: tests must be a list of pytest node IDs ('file::test')"
        )

    return Behaviour(
        tests=tuple(tests),
        id=ident,
        api=table["api"],
        statement=table["statement"],
        source=table["source"],
        issue=issue,
        not_implemented=frozenset(backends),
    )


def load_behaviours() -> tuple[Behaviour, ...]:
    """Read, validate and return the catalogue, in file order.

    Raises :class:`CatalogueError` if the file is not valid TOML, has
    anything besides ``[[behaviour]]`` tables at the top level, or if any
    entry lacks a key, has an unknown key, has a value of the wrong type, has
    a malformed ID, or repeats an ID used earlier.
    """
    resource = resources.files(_PACKAGE).joinpath(CATALOGUE_FILE)
    try:
        document = tomllib.loads(resource.read_text(encoding="utf-8"))
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
