"""The catalogue's ``tests`` key: a list for ref, or a table per backend.

``spec.catalogue`` checks every entry strictly; these tests feed it small
catalogues through ``parse_behaviours`` and check what it accepts, what it
makes of it, and that each malformed shape is refused naming the entry.
"""

from __future__ import annotations

import pytest

from spec.catalogue import CatalogueError, load_behaviours, parse_behaviours

ENTRY = """
[[behaviour]]
id = "x.some-rule"
api = "x"
statement = "Something must hold."
source = "here"
issue = 1
not_implemented = {not_implemented}
"""


def _one(tests: str, not_implemented: str = "[]") -> str:
    return ENTRY.format(not_implemented=not_implemented) + tests + "\n"


def test_a_plain_list_names_refs_tests() -> None:
    [entry] = parse_behaviours(_one('tests = ["tests/test_a.py::test_a"]'))
    assert entry.tests == ("tests/test_a.py::test_a",)
    assert dict(entry.tests_by_backend) == {"ref": ("tests/test_a.py::test_a",)}
    assert entry.tests_for("ref") == ("tests/test_a.py::test_a",)
    assert entry.tests_for("sim") == ()


def test_a_table_names_each_backends_tests() -> None:
    source = _one(
        'tests.ref = ["tests/test_a.py::test_a"]\n'
        'tests.sim = ["tests/test_b.py::test_b", "tests/test_b.py::test_c"]'
    )
    [entry] = parse_behaviours(source)
    assert entry.tests == ("tests/test_a.py::test_a",)
    assert entry.tests_for("sim") == (
        "tests/test_b.py::test_b",
        "tests/test_b.py::test_c",
    )


def test_sim_tests_alone_leave_ref_without_tests() -> None:
    [entry] = parse_behaviours(_one('tests = { sim = ["tests/test_b.py::test_b"] }'))
    assert entry.tests == ()
    assert entry.tests_for("ref") == ()
    assert entry.tests_for("sim") == ("tests/test_b.py::test_b",)


def test_no_tests_key_means_no_tests() -> None:
    [entry] = parse_behaviours(_one(""))
    assert entry.tests == () and dict(entry.tests_by_backend) == {}


@pytest.mark.parametrize(
    ("tests", "complaint"),
    [
        ('tests = "tests/test_a.py::test_a"', "list of pytest node IDs, or a table"),
        ('tests = ["test_a"]', "pytest node IDs"),
        ("tests.sim = []", "tests for 'sim' must be a non-empty list"),
        ('tests.sim = "tests/test_a.py::test_a"', "tests for 'sim'"),
        ("tests.sim = [1]", "tests for 'sim'"),
        ('tests." " = ["tests/test_a.py::test_a"]', "empty backend"),
    ],
)
def test_malformed_tests_are_refused_naming_the_entry(
    tests: str, complaint: str
) -> None:
    with pytest.raises(CatalogueError, match=r"x\.some-rule") as caught:
        parse_behaviours(_one(tests))
    assert complaint in str(caught.value)


def test_tests_for_a_backend_marked_not_implemented_are_a_contradiction() -> None:
    source = _one('tests.sim = ["tests/test_b.py::test_b"]', '["sim"]')
    with pytest.raises(CatalogueError, match="names tests for sim but marks it"):
        parse_behaviours(source)


def test_refs_tests_with_sim_not_implemented_stay_valid() -> None:
    [entry] = parse_behaviours(_one('tests = ["tests/test_a.py::test_a"]', '["sim"]'))
    assert entry.not_implemented == {"sim"}


def test_the_shipped_catalogue_parses_and_entries_stay_hashable() -> None:
    behaviours = load_behaviours()
    assert len({hash(b) for b in behaviours}) == len(behaviours)
    assert any(b.tests_for("sim") for b in behaviours)
