"""The lists docs/worklist.md and docs/watchfolder.md give are generated from the code's own
tables (issue 16 item 3: both contradicted the code): the IODs `[modality] iod` may name, the
regions an order is read for, the `[watch_folder]` keys. Each block between its markers must be
exactly the generated text; DOCS_UPDATE=1 rewrites the blocks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import config
from agent.config_doc import section_table
from agent.iod.anatomy import regions_markdown
from agent.iod.iods import iod_list_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCKS: list[tuple[str, str, Callable[[], str]]] = [
    ("worklist.md", "worklist-iods", iod_list_markdown),
    ("worklist.md", "worklist-regions", regions_markdown),
    ("watchfolder.md", "watch-folder-settings",
     lambda: section_table(config.WatchFolderSection)),
]


@pytest.mark.parametrize(("name", "marker", "generate"), BLOCKS, ids=[b[1] for b in BLOCKS])
def test_the_block_is_the_generated_text(name: str, marker: str,
                                         generate: Callable[[], str]) -> None:
    path = DOCS / name
    text = path.read_text(encoding="utf-8")
    begin, end = f"<!-- {marker}: begin -->\n", f"<!-- {marker}: end -->"
    pattern = re.compile(re.escape(begin) + r"(.*?)" + re.escape(end), re.DOTALL)
    match = pattern.search(text)
    assert match is not None, f"{name}: no {marker} markers"
    wanted = generate()
    if os.environ.get("DOCS_UPDATE") == "1" and match.group(1) != wanted:
        path.write_text(text[:match.start(1)] + wanted + text[match.end(1):], encoding="utf-8")
        match = pattern.search(path.read_text(encoding="utf-8"))
        assert match is not None
    assert match.group(1) == wanted, (
        f"docs/{name} {marker} is stale: DOCS_UPDATE=1 .venv/bin/pytest "
        "tests/unit/test_generated_docs.py")


def test_no_doc_calls_existing_settings_proposed() -> None:
    for name in ("worklist.md", "watchfolder.md", "configuration.md"):
        assert "proposed, `[" not in (DOCS / name).read_text(encoding="utf-8"), name
