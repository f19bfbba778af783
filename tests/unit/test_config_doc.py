"""docs/configuration.md is generated from the config's own definitions (issue 16 item 3): the
keys' meanings in agent.config.REFERENCE, defaults from the section dataclasses, ranges from the
checks load_config applies. The file must be exactly the generated text
(CONFIG_DOC_UPDATE=1 .venv/bin/pytest tests/unit/test_config_doc.py rewrites it), and every key
of every section has exactly one row."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from agent import config
from agent.config_doc import SECTIONS, SectionText, render, section_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_doc_is_the_generated_text() -> None:
    generated = render()
    if os.environ.get("CONFIG_DOC_UPDATE") == "1":
        DOC.write_text(generated, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == generated, (
        "docs/configuration.md is stale: edit agent/config.py's REFERENCE (or the prose in "
        "agent/config_doc.py), then run CONFIG_DOC_UPDATE=1 .venv/bin/pytest "
        "tests/unit/test_config_doc.py")


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.heading)
def test_every_key_has_one_row_and_every_row_a_key(section: SectionText) -> None:
    documented = [key for doc in config.REFERENCE[section.cls] for key in doc.keys]
    fields = [f.name for f in dataclasses.fields(section.cls)]
    assert sorted(documented) == sorted(fields)


def test_every_section_dataclass_has_a_section() -> None:
    assert {s.cls for s in SECTIONS} == set(config.REFERENCE)
    assert len(SECTIONS) == len(config.REFERENCE)


def test_choices_and_ranges_come_from_the_checks() -> None:
    # the drift the issue found: one IOD and one transfer syntax listed where more are accepted
    modality = section_table(config.ModalitySection)
    for name in (*config.KNOWN_IODS, *config.KNOWN_TRANSFER_SYNTAXES):
        assert f"`{name}`" in modality
    assert "| `port` | port | required | 1..65535 |" in section_table(config.WorklistSection)
    assert "| 1..4096 |" in section_table(config.DestinationSection)     # max_request_mb
