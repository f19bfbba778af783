"""The dose report end to end (issue 16 item 1): the serial firmware stub → the real serial
driver in the daemon, `[modality] iod = "dx"` → three exposures in a worklist procedure (a
real RIS, DCMTK wlmscpfs) ended completed → Orthanc holds the three DX images and one X-Ray
Radiation Dose SR whose TID 10003 events match the images one to one: Irradiation Event UID
(0008,3010), kVp, exposure time and exposure. The images carry the region and side the order
names and the Protocol Name the MPPS sends; before that, a DX of a paired body part without
its side is refused by the CLI before the device fires (issue 16 item 3)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import free_port, run_dciodvfy, stop_process, wait_until
from support.worklist_data import Code, numbered, running_wlmscpfs, write_wl

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


HAND_LEFT = numbered(
    7, modality="DX", patient_id="PID-DOSE-7", start_date=date.today().strftime("%Y%m%d"),
    requested_procedure_description="Hand left",
    requested_procedure_code=Code("RPID-HAND", "99LOCAL", "Hand radiograph left"),
    sps_description="Hand PA left", protocol_code=Code("XR-HAND-L", "99LOCAL", "XR Hand Left"))


def test_three_exposures_make_three_dx_images_and_one_dose_sr_that_match(
        tmp_path: Path, orthanc: OrthancServer) -> None:
    with running_wlmscpfs(tmp_path / "ris", "-csk") as ris:
        ris_ae, folder = ris.new_called_ae()
        write_wl(folder, HAND_LEFT, "hand")
        run_dose_test(tmp_path, orthanc, f'[worklist]\nhost = "127.0.0.1"\nport = {ris.port}\n'
                                         f'called_ae = "{ris_ae}"\nrefresh_s = 3600\n')


def run_dose_test(tmp_path: Path, orthanc: OrthancServer, worklist_toml: str) -> None:
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
            extra_toml=worklist_toml,
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
            # a knee without its side: refused before the device fires, nothing started
            refused = agent.cli("acquire", "--unscheduled", "--patient-id", "DOSE-1",
                                "--patient-name", "Dose^Test", "--body-part", "KNEE")
            assert refused.returncode != 0
            assert "'Knee' (72696002) is a paired body part" in refused.stderr
            assert "--laterality" in refused.stderr
            status = json.loads(agent.cli("status", "--json").stdout)
            assert status["device"]["frames_read"] == 0 and status["procedures"] == []
            assert agent.queue_rows() == []

            # the order names the hand and the left side: nothing to ask
            result = agent.cli("acquire", "--accession", HAND_LEFT.accession_number,
                               "--frames", "3", "--performed-as-scheduled",
                               "--end", "completed", "--wait", "60", "--json", timeout_s=120)
            assert result.returncode == 0, result.stderr + agent.log()[-2000:]
            acquired = json.loads(result.stdout)
            assert not acquired.get("warning"), acquired["warning"]
            images = [dcmread(io.BytesIO(orthanc.instance_file(
                orthanc.find_instance(o["sop_instance_uid"]) or "")))
                for o in acquired["objects"]]
            assert [str(ds.SOPClassUID) for ds in images] == [DX] * 3
            for ds in images:
                assert ds.ImageLaterality == "L"
                assert ds.AnatomicRegionSequence[0].CodeValue == "85562004"      # Hand
                assert ds.ProtocolName == HAND_LEFT.sps_description    # what the MPPS sends
                assert ds.StudyInstanceUID == HAND_LEFT.study_instance_uid
                path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path)
                assert run_dciodvfy(path) == []

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
