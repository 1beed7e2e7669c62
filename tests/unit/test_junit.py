"""JUnit XML written by smoke runs: counts, failures with evidence, safe text."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from qemuvm.workflow import junit
from qemuvm.workflow.junit import Case


def _cases() -> list[Case]:
    return [
        Case("boot", "passed", 1.25),
        Case("ready", "passed", 2.5, output="QEMUVM_GUEST_READY"),
        Case("kernel", "failed", 0.5, message="output does not match '^5\\.'", output="6.1.0-56-cloud-amd64\n"),
        Case("marker", "skipped", message="not run: the smoke timeout expired"),
    ]


def test_suite_counts_and_cases(tmp_path):
    path = junit.write(tmp_path / "sub" / "out.xml", "qemuvm.smoke.ci-smoke", _cases(),
                       properties={"instance": "ci-smoke-smoke-abc123"})
    root = ET.parse(path).getroot()
    assert root.tag == "testsuite"
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == ("4", "1", "1", "0")
    assert float(root.get("time")) == 4.25
    assert [c.get("name") for c in root.iter("testcase")] == ["boot", "ready", "kernel", "marker"]
    assert root.find("properties/property").get("value") == "ci-smoke-smoke-abc123"
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")


def test_failure_carries_message_and_output():
    root = junit.build("s", _cases())
    kernel = root.find("testcase[@name='kernel']")
    failure = kernel.find("failure")
    assert failure.get("message") == "output does not match '^5\\.'"
    assert "6.1.0-56-cloud-amd64" in failure.text
    assert root.find("testcase[@name='boot']/failure") is None
    assert root.find("testcase[@name='marker']/skipped").get("message").startswith("not run")
    assert root.find("testcase[@name='ready']/system-out").text == "QEMUVM_GUEST_READY"


def test_control_characters_from_a_serial_console_stay_valid_xml(tmp_path):
    noisy = "\x1b[0m\x00boot\x07 ok \u00e9\n"
    path = junit.write(tmp_path / "out.xml", "s", [Case("serial", "failed", message="bad\x01", output=noisy)])
    failure = ET.parse(path).getroot().find("testcase/failure")  # parses: the document is well-formed
    assert "boot" in failure.text and "\x00" not in failure.text and "\u00e9" in failure.text
    assert failure.get("message") == "bad\ufffd"


def test_long_output_is_cut_from_the_front():
    text = "x" * 10 + "y" * junit.MAX_OUTPUT
    cut = junit.xml_text(text)
    assert cut.endswith("y" * 100) and "10 characters cut" in cut and "x" not in cut.split("\n", 1)[1]


def test_the_report_is_private_wherever_it_is_written(tmp_path):
    """It carries the checks' output: 0600, also where a world-readable file of that name was before."""
    import os

    fresh = junit.write(tmp_path / "fresh.xml", "s", _cases())
    old = tmp_path / "old.xml"
    old.write_text("stale")
    os.chmod(old, 0o644)
    junit.write(old, "s", _cases())
    assert fresh.stat().st_mode & 0o777 == 0o600 and old.stat().st_mode & 0o777 == 0o600
    assert ET.parse(old).getroot().tag == "testsuite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.xml", "old.xml"]  # no temporary left
