"""The IOD tables (agent.iod.iods) are the single source: SOP classes from pydicom, every
module we say we write has a writer and every mandatory module is written, builders only add
(never delete or rewrite an attribute), and docs/iods.md shows exactly these tables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import uid as pydicom_uid
from pydicom.dataset import Dataset
from test_iod_golden import CASES, build_case

from agent.iod import KNOWN_IODS, MULTIFRAME_IODS
from agent.iod.images import writer_keys
from agent.iod.iods import IODS, MODULES, Usage

DOC = Path(__file__).resolve().parents[2] / "docs" / "iods.md"
BEGIN, END = "<!-- iod-module-tables: begin -->", "<!-- iod-module-tables: end -->"


def test_sop_classes_are_pydicom_s() -> None:
    names = {str(value): name for name, value in vars(pydicom_uid).items()
             if isinstance(value, pydicom_uid.UID)}
    for spec in IODS.values():
        assert spec.sop_class_uid in names, f"{spec.name}: {spec.sop_class_uid} not in pydicom"
    assert KNOWN_IODS == {name: spec.sop_class_uid for name, spec in IODS.items()}
    assert {name for name, spec in IODS.items() if spec.max_frames != 1} == MULTIFRAME_IODS


@pytest.mark.parametrize("name", IODS)
def test_table_rows_are_known_and_written_when_mandatory(name: str) -> None:
    spec = IODS[name]
    keys = [row.key for row in spec.modules]
    assert len(keys) == len(set(keys)), f"{name}: a module is listed twice"
    for row in spec.modules:
        assert row.key in MODULES, f"{name}: unknown module {row.key}"
        if row.usage is Usage.MANDATORY:
            assert row.written is True, f"{name}: mandatory module {row.key} is not written"
        if row.written is not False:
            assert row.key in writer_keys(), f"{name}: {row.key} written but has no writer"


@pytest.fixture
def no_deletion(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Building must only add: any deletion from a Dataset fails the test."""
    def refuse(self: Dataset, key: object) -> None:
        raise AssertionError(f"the builder deleted {key!r}")
    monkeypatch.setattr(Dataset, "__delitem__", refuse)
    monkeypatch.setattr(Dataset, "__delattr__", refuse)
    yield


@pytest.mark.parametrize("case", CASES)
def test_builders_never_delete(case: str, no_deletion: None) -> None:
    assert build_case(case, "explicit-little")


def test_doc_lists_the_modules_of_the_tables() -> None:
    """docs/iods.md between the markers is `modules_markdown()`; IOD_DOC_UPDATE=1 rewrites it."""
    from agent.iod.iods import modules_markdown

    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)
    match = pattern.search(text)
    assert match, f"{DOC}: the markers {BEGIN} / {END} are missing"
    wanted = modules_markdown()
    if os.environ.get("IOD_DOC_UPDATE") == "1" and match.group(1) != wanted:
        DOC.write_text(text[:match.start(1)] + wanted + text[match.end(1):], encoding="utf-8")
        text = DOC.read_text(encoding="utf-8")
        match = pattern.search(text)
        assert match
    assert match.group(1) == wanted, (
        f"{DOC} lists other modules than agent/iod/iods.py; regenerate with "
        "IOD_DOC_UPDATE=1 pytest tests/unit/test_iod_tables.py")
