"""Issue 16 item 3 in the technologist's console: on a DX device the page asks for the body part
and side the order does not give, and does not arm Expose until a paired body part has its side;
what it sends is what the images carry. Real headless Chromium, real daemon with `[modality] iod
= "dx"` on the serial device stub (its exposure counter lives in this process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from support.agent_process import Destination, make_agent
from support.peers import free_port, wait_until
from test_console_browser import (
    STEP_S,
    Page,
    Rig,
    acquisitions,
    chromium_path,
    enabled,
    nothing_happened,
    rendered,
    shown,
    text,
)

from agent.queue.spool import Spool
from firmware_stubs.pty_host import serve
from firmware_stubs.serial_device import SerialFirmware

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="no Chromium installed"),
]


@pytest.fixture
def dx_rig(tmp_path: Path) -> Iterator[Rig]:
    firmware = SerialFirmware(rows=64, columns=64)
    with serve(firmware) as tty_path:
        agent = make_agent(
            tmp_path, [Destination("pacs", free_port(), "NOBODY")],
            device_toml=f'[device]\ndriver = "serial"\n[device.options]\nport = "{tty_path}"\n'
                        "kvp = 81.0\nmas = 4.0\n")
        config = agent.config_path.read_text()
        assert '[modality]\nmodality = "OT"' in config
        agent.config_path.write_text(config.replace(
            '[modality]\nmodality = "OT"',
            '[modality]\nmodality = "DX"\niod = "dx"\npatient_orientation = ["L", "F"]'))
        agent.start()
        try:
            yield Rig(agent, firmware)
        finally:
            agent.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    with Page(timeout_s=STEP_S) as tab:
        yield tab


def choose(page: Page, select_id: str, value: str) -> None:
    page.evaluate(f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); "
                  f"s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change')); }})()")


def test_the_console_asks_for_the_side_before_it_arms_expose(dx_rig: Rig, page: Page) -> None:
    page.goto(dx_rig.console_url)
    page.wait_for("document.getElementById('unscheduled-panel').open", "the unscheduled form")
    page.wait_for("document.getElementById('body-part').options.length > 30",
                  "the body parts from GET /api/body-parts")
    page.type_into("#unscheduled [name=patient_id]", "PID-KNEE-16")
    page.type_into("#unscheduled [name=family]", "Knee")
    page.click("#unscheduled button[type=submit]")
    page.wait_for(enabled("start"), "the Start procedure button")
    page.click("#start")
    page.wait_for(enabled("acquire"), "the Acquire button once the procedure started")
    page.wait_for(rendered("anatomy"), "the body part and side row on a DX device")
    assert "choose the body part and side" in text(page, "anatomy-source")

    page.click("#acquire")                       # nothing chosen
    assert not shown(page, "expose-confirm")
    assert text(page, "message") == "Choose the body part and side before exposing"
    choose(page, "body-part", "KNEE")
    page.click("#acquire")                       # a paired body part without its side
    assert not shown(page, "expose-confirm")
    assert text(page, "message") == "Knee: choose the side (R, L or B)"
    harm = nothing_happened(dx_rig, page, "before a side was chosen")
    assert not harm, "\n".join(harm)

    choose(page, "laterality", "L")
    page.click("#acquire")
    page.wait_for(rendered("expose-confirm"), "the Expose row once the side is chosen")
    page.click("#expose")
    wait_until(lambda: dx_rig.exposures >= 1 and dx_rig.queued >= 1, 2 * STEP_S,
               "one exposure and one queued object after Expose")
    [sent] = acquisitions(page)
    assert (sent["body_part"], sent["laterality"]) == ("KNEE", "L")
    # the image in the spool carries them
    [row] = dx_rig.agent.queue_rows()
    ds = dcmread(Spool(dx_rig.agent.spool_dir).object_path(row["queue_id"]))
    assert ds.ImageLaterality == "L"
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Knee"
