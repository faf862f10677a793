"""Report writers: a text table for people, JSON and JUnit XML for machines.

Every writer takes a :class:`~conformance.runner.RunReport` and none of them
changes it, prints, or decides the exit status; the CLI does those.

The JSON report is ``{"results": [...], "summary": {...}}``, where each
result has exactly the keys ``behaviour``, ``backend``, ``status`` and
``detail``.  The JUnit report has one ``testsuite`` per backend and one
``testcase`` per behaviour, plus a ``catalogue`` suite when scenarios name
unknown behaviour IDs.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from conformance.runner import NO_SCENARIO, Result, RunReport, Status

__all__ = [
    "CELLS",
    "format_details",
    "format_summary",
    "format_table",
    "format_text",
    "summary_line",
    "to_json",
    "to_junit",
    "write_json",
    "write_junit",
]

#: The text of each status in a table cell.
CELLS = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.ERROR: "ERROR",
    Status.NOT_IMPLEMENTED: "N-I",
    Status.SKIP: "SKIP",
}

_COLOURS = {
    Status.PASS: "\x1b[32m",
    Status.FAIL: "\x1b[31m",
    Status.ERROR: "\x1b[1;31m",
    Status.NOT_IMPLEMENTED: "\x1b[2m",
    Status.SKIP: "\x1b[33m",
}
_RESET = "\x1b[0m"
_CELL_WIDTH = max(len(text) for text in CELLS.values())

# Characters XML 1.0 cannot carry at all; exception messages may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def format_table(report: RunReport, *, colour: bool = False) -> str:
    """One row per behaviour, one column per backend, cells aligned."""
    first = max([len("behaviour"), *(len(b) for b in report.behaviours)])
    widths = [max(len(name), _CELL_WIDTH) for name in report.backends]
    columns = list(zip(report.backends, widths, strict=True))
    header = ["behaviour".ljust(first), *(name.ljust(w) for name, w in columns)]
    lines = ["  ".join(header).rstrip()]

    cells = {(r.behaviour, r.backend): r.status for r in report.results}
    for behaviour in report.behaviours:
        row = [behaviour.ljust(first)]
        for backend, width in columns:
            status = cells[behaviour, backend]
            # Pad before colouring so escape codes do not upset alignment.
            text = CELLS[status].ljust(width)
            row.append(f"{_COLOURS[status]}{text}{_RESET}" if colour else text)
        lines.append("  ".join(row).rstrip())

    return "\n".join(lines)


def summary_line(report: RunReport, backend: str) -> str:
    """``ref: 40 pass, 0 fail, 0 error, 120 not-implemented, 2 skip``."""
    counts = report.counts(backend)
    line = f"{backend}: " + ", ".join(f"{counts[s]} {s}" for s in Status)
    reason = report.unavailable.get(backend)
    return line if reason is None else f"{line} (unavailable: {reason})"


def format_summary(report: RunReport) -> str:
    """A summary line per backend, the catalogue mismatches, a final verdict."""
    lines = [summary_line(report, backend) for backend in report.backends]
    lines.extend(f"catalogue mismatch: {m}" for m in report.mismatches)

    failures = sum(r.status is Status.FAIL for r in report.results)
    errors = sum(r.status is Status.ERROR for r in report.results)
    size = f"{len(report.behaviours)} behaviours on {len(report.backends)} backends"
    if report.ok:
        lines.append(f"OK: {size}, no failures or errors")
    else:
        mismatches = len(report.mismatches)
        lines.append(
            f"FAILED: {size}: {failures} fail, {errors} error, "
            f"{mismatches} catalogue mismatch{'es' if mismatches != 1 else ''}"
        )
    return "\n".join(lines)


def format_details(report: RunReport) -> str:
    """Why each behaviour failed or errored; empty when none did.

    Behaviours that no scenario covers are listed once, together, rather
    than once per backend: the hole is in the suite, not in a backend.
    """
    blocks = []
    uncovered: dict[str, None] = {}
    for result in report.results:
        if result.status is Status.ERROR and result.detail == NO_SCENARIO:
            uncovered[result.behaviour] = None
        elif result.status in (Status.FAIL, Status.ERROR):
            title = f"{CELLS[result.status]} {result.behaviour} on {result.backend}"
            body = "\n".join(f"    {line}" for line in result.detail.splitlines())
            blocks.append(f"{title}\n{body}" if body else title)

    if uncovered:
        listing = "\n".join(f"    {behaviour}" for behaviour in uncovered)
        blocks.append(f"ERROR {NO_SCENARIO} ({len(uncovered)}):\n{listing}")
    return "\n".join(blocks)


def format_text(report: RunReport, *, colour: bool = False) -> str:
    """The whole plain-text report: table, details (if any), then summary."""
    parts = [format_table(report, colour=colour), format_details(report)]
    parts.append(format_summary(report))
    return "\n\n".join(part for part in parts if part)


def to_json(report: RunReport) -> dict[str, object]:
    """The JSON report as plain data, in result order."""
    results = [
        {
            "behaviour": r.behaviour,
            "backend": r.backend,
            "status": str(r.status),
            "detail": r.detail,
        }
        for r in report.results
    ]
    backends = {
        name: {
            **{str(s): n for s, n in report.counts(name).items()},
            "unavailable": report.unavailable.get(name),
        }
        for name in report.backends
    }
    summary = {
        "ok": report.ok,
        "seed": report.seed,
        "backends": backends,
        "mismatches": [str(m) for m in report.mismatches],
    }
    return {"results": results, "summary": summary}


def write_json(report: RunReport, path: Path) -> None:
    """Write :func:`to_json` to ``path`` as UTF-8, indented, newline-ended."""
    text = json.dumps(to_json(report), indent=2, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def to_junit(report: RunReport) -> ET.Element:
    """The JUnit XML report as an element tree rooted at ``testsuites``."""
    root = ET.Element("testsuites", name="conformance")
    for backend in report.backends:
        suite = ET.SubElement(root, "testsuite", name=backend)
        for result in report.results:
            if result.backend == backend:
                _testcase(suite, result)
        _count(suite)

    if report.mismatches:
        suite = ET.SubElement(root, "testsuite", name="catalogue")
        for mismatch in report.mismatches:
            case = ET.SubElement(
                suite, "testcase", name=mismatch.scenario, classname="catalogue"
            )
            ET.SubElement(case, "error", message=_xml_safe(str(mismatch)))
        _count(suite)

    _total(root)
    return root


def write_junit(report: RunReport, path: Path) -> None:
    """Write :func:`to_junit` to ``path`` with an XML declaration."""
    tree = ET.ElementTree(to_junit(report))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def _testcase(suite: ET.Element, result: Result) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        name=result.behaviour,
        classname=f"conformance.{result.backend}",
    )
    detail = _xml_safe(result.detail)
    message = detail.splitlines()[0] if detail else str(result.status)

    if result.status is Status.FAIL:
        ET.SubElement(case, "failure", message=message).text = detail
    elif result.status is Status.ERROR:
        ET.SubElement(case, "error", message=message).text = detail
    elif result.status is Status.NOT_IMPLEMENTED:
        ET.SubElement(case, "skipped", message=f"not implemented: {detail}")
    elif result.status is Status.SKIP:
        ET.SubElement(case, "skipped", message=detail)


def _count(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    for tag, attribute in (
        ("failure", "failures"),
        ("error", "errors"),
        ("skipped", "skipped"),
    ):
        suite.set(attribute, str(sum(c.find(tag) is not None for c in cases)))


def _total(root: ET.Element) -> None:
    for attribute in ("tests", "failures", "errors", "skipped"):
        total = sum(int(s.get(attribute, "0")) for s in root.findall("testsuite"))
        root.set(attribute, str(total))


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)
