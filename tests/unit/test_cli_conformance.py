"""`modality-agent conformance [--format md|html]`: offline, from the config alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "agent.example.toml"


@pytest.mark.parametrize(("fmt", "start"), [("md", "# DICOM Conformance Statement"),
                                            ("html", "<!DOCTYPE html>")])
def test_conformance_command(fmt: str, start: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(EXAMPLE), "conformance", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert out.startswith(start)
    assert "1.2.840.10008.1.20.1" in out          # Storage Commitment Push Model, as used


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--config", str(EXAMPLE), "conformance", "--format", "pdf"])
    assert raised.value.code == 2
