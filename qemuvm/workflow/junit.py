"""JUnit XML for smoke runs: one <testsuite>, one <testcase> per step (boot, ready, each check).

The format CI systems read (GitHub Actions reporters, GitLab, Jenkins): a failed case carries a
<failure message="..."> whose text is the evidence (command output, serial tail); a case that never
ran because an earlier step failed is <skipped>.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "skipped"]

# XML 1.0 forbids most control characters; serial consoles are full of them (ANSI escapes, NUL).
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Keep reports readable: the artifacts folder has the full logs.
MAX_OUTPUT = 64 * 1024


@dataclass
class Case:
    """The outcome of one step of a smoke run."""

    name: str
    status: Status
    seconds: float = 0.0
    message: str = ""  # one line: why it failed or was skipped
    output: str = ""  # evidence: command output, serial lines

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def xml_text(text: str, limit: int = MAX_OUTPUT) -> str:
    """Text safe for an XML 1.0 document: invalid characters replaced, long text cut from the front."""
    if len(text) > limit:
        text = f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]
    return _INVALID_XML.sub("\ufffd", text)


def build(suite: str, cases: Iterable[Case], *, timestamp: datetime | None = None,
          properties: dict[str, str] | None = None) -> ET.Element:
    """The <testsuite> element for `cases`."""
    cases = list(cases)
    root = ET.Element("testsuite", {
        "name": suite,
        "tests": str(len(cases)),
        "failures": str(sum(c.status == "failed" for c in cases)),
        "errors": "0",
        "skipped": str(sum(c.status == "skipped" for c in cases)),
        "time": f"{sum(c.seconds for c in cases):.3f}",
        "timestamp": (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname(),
    })
    if properties:
        props = ET.SubElement(root, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", {"name": key, "value": xml_text(str(value))})
    for case in cases:
        element = ET.SubElement(root, "testcase", {
            "classname": suite, "name": xml_text(case.name), "time": f"{case.seconds:.3f}",
        })
        if case.status == "failed":
            failure = ET.SubElement(element, "failure", {"message": xml_text(case.message, 1000),
                                                         "type": "AssertionError"})
            failure.text = xml_text(case.output)
        elif case.status == "skipped":
            ET.SubElement(element, "skipped", {"message": xml_text(case.message, 1000)})
        elif case.output:
            ET.SubElement(element, "system-out").text = xml_text(case.output)
    return root


def write(path: str | Path, suite: str, cases: Iterable[Case], **kwargs) -> Path:
    """Write the report (UTF-8, with an XML declaration), creating the parent folder. 0600 and atomic, as every
    file smoke writes: it carries the checks' output (a CI reader runs as the same user)."""
    import io

    from qemuvm.runtime.atomic import write_private_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.ElementTree(build(suite, cases, **kwargs))
    ET.indent(tree)
    data = io.BytesIO()
    tree.write(data, encoding="utf-8", xml_declaration=True)
    write_private_atomic(path, data.getvalue())
    return path
