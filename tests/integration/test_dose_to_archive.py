"""The dose report end to end (issue 16 item 1): the serial firmware stub → the real serial
driver in the daemon, `[modality] iod = "dx"` → three exposures in an unscheduled procedure
ended completed → Orthanc holds the three DX images and one X-Ray Radiation Dose SR whose
TID 10003 events match the images one to one: Irradiation Event UID (0008,3010), kVp,
exposure time and exposure."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import free_port, run_dciodvfy, stop_process, wait_until

from agent.demo.orthanc import OrthancServer, RegisteredModality
from agent.iod.dose_sr import EXPOSURE, EXPOSURE_TIME, IRRADIATION_EVENT_UID, KVP

pytestmark = pytest.mark.integration

DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def event_rows(report: Dataset) -> dict[str, dict[str, float]]:
    """Each TID 10003 container's kVp / exposure time (ms) / exposure (µAs), by event UID."""
    rows: dict[str, dict[str, float]] = {}
    for container in report.ContentSequence:
        if container.ValueType != "CONTAINER":
            continue
        values: dict[str, Any] = {}
        for item in container.ContentSequence:
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code == IRRADIATION_EVENT_UID.value:
                values["uid"] = str(item.UID)
            elif code in (KVP.value, EXPOSURE_TIME.value, EXPOSURE.value) \
                    and item.MeasuredValueSequence:
                values[code] = float(item.MeasuredValueSequence[0].NumericValue)
        if "uid" in values:
            rows[values.pop("uid")] = values
    return rows


def test_three_exposures_make_three_dx_images_and_one_dose_sr_that_match(
        tmp_path: Path, orthanc: OrthancServer) -> None:
    link = tmp_path / "ttyXRAY"
    with (tmp_path / "stub.log").open("w") as log:
        stub = subprocess.Popen([sys.executable, "-m", "agent", "simulate", "serial",
                                 "--link", str(link)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(link.exists, 10, "simulate serial did not make its link")
        listener_port = free_port()
        orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1",
                                                     listener_port))
        agent = make_agent(
            tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
            listener_port=listener_port,
            device_toml=f'[device]\ndriver = "serial"\n[device.options]\nport = "{link}"\n'
                        f"kvp = 81.0\nmas = 4.0\n",
        )
        config = agent.config_path.read_text()
        assert '[modality]\nmodality = "OT"' in config     # the helper's section, extended
        agent.config_path.write_text(config.replace(
            '[modality]\nmodality = "OT"',
            '[modality]\nmodality = "DX"\niod = "dx"\npatient_orientation = ["L", "F"]\n'
            'device_serial_number = "SN-DOSE-1"'))
        assert agent.cli("check-config").returncode == 0
        agent.start()
        try:
            result = agent.cli("acquire", "--unscheduled", "--patient-id", "DOSE-1",
                               "--patient-name", "Dose^Test", "--frames", "3",
                               "--end", "completed", "--wait", "60", "--json", timeout_s=120)
            assert result.returncode == 0, result.stderr + agent.log()[-2000:]
            acquired = json.loads(result.stdout)
            assert not acquired.get("warning"), acquired["warning"]
            images = [dcmread(io.BytesIO(orthanc.instance_file(
                orthanc.find_instance(o["sop_instance_uid"]) or "")))
                for o in acquired["objects"]]
            assert [str(ds.SOPClassUID) for ds in images] == [DX] * 3

            def stored_reports() -> list[Dataset]:
                found = []
                for orthanc_id in orthanc.instances():
                    ds = dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
                    if str(ds.SOPClassUID) == DOSE_SR:
                        found.append(ds)
                return found

            wait_until(lambda: len(stored_reports()) >= 1, 60,
                       "no dose SR reached Orthanc:\n" + agent.log()[-2000:])
            [report] = stored_reports()
            assert len(orthanc.instances()) == 4               # 3 images + 1 report, no more
            assert report.StudyInstanceUID == images[0].StudyInstanceUID
            assert report.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in images}
            rows = event_rows(report)
            assert sorted(rows) == sorted(str(ds.IrradiationEventUID) for ds in images)
            assert len(set(rows)) == 3                          # one event per image
            for ds in images:
                row = rows[str(ds.IrradiationEventUID)]
                assert row[KVP.value] == pytest.approx(float(ds.KVP))
                assert row[EXPOSURE_TIME.value] == pytest.approx(float(ds.ExposureTimeInuS)
                                                                 / 1000)
                assert row[EXPOSURE.value] == pytest.approx(float(ds.ExposureInuAs))
            path = tmp_path / "dose.dcm"
            report.save_as(path)
            assert run_dciodvfy(path) == []
        finally:
            agent.stop()
    finally:
        stop_process(stub)
