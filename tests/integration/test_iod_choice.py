"""[modality] iod and transfer_syntax through the daemon: a multi-frame RLE object reaches
Orthanc compressed, and an archive that refuses RLE gets an uncompressed copy of the same
instance (same UID, same pixels)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import Peer, free_port, run_dciodvfy

from agent.demo.orthanc import OrthancServer, RegisteredModality
from drivers.simulated import phantom

pytestmark = pytest.mark.integration

DEVICE = '[device]\ndriver = "simulated"\n[device.options]\nwidth = 64\nheight = 48\n' \
         'bits_stored = 12\nframe_rate = 50.0\n'


def test_multiframe_rle_to_orthanc_and_uncompressed_fallback(
        tmp_path: Path, orthanc: OrthancServer, storescp: Peer) -> None:
    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    agent = make_agent(
        tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title),
                   Destination("scp", storescp.port, storescp.ae_title,
                               storage_commitment=False)],
        listener_port=listener_port,
        device_toml=DEVICE + '[modality]\nmodality = "OT"\n'
                             'iod = "multiframe-grayscale-word-sc"\ntransfer_syntax = "rle"\n')
    # write_config also writes a [modality] section: the device_toml one must be the only one
    text = agent.config_path.read_text().replace(
        '[modality]\nmodality = "OT"\nstation_name = "TESTROOM"\n', "", 1)
    agent.config_path.write_text(text)
    assert agent.cli("check-config").returncode == 0, agent.cli("check-config").stdout
    agent.start()
    try:
        result = agent.cli("acquire", "--unscheduled", "--patient-id", "MF-1", "--patient-name",
                           "Multi^Frame", "--frames", "5", "--wait", "60", "--json")
        assert result.returncode == 0, result.stderr + agent.log()[-2000:]
        [obj] = json.loads(result.stdout)["objects"]          # five frames, one object
        expected = np.stack([phantom(48, 64, 12, i) for i in range(5)])
        held = dcmread(io.BytesIO(orthanc.instance_file(
            orthanc.find_instance(obj["sop_instance_uid"]) or "")))
        assert held.file_meta.TransferSyntaxUID == RLELossless
        assert held.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.3" and held.NumberOfFrames == 5
        assert np.array_equal(held.pixel_array, expected)
        [received] = list(storescp.out_dir.iterdir())
        copy = dcmread(received)
        assert copy.SOPInstanceUID == obj["sop_instance_uid"]         # the same instance
        assert not copy.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(copy.pixel_array, expected)
        assert run_dciodvfy(received) == []
    finally:
        agent.stop()


def test_unknown_iod_is_a_config_error_listing_the_valid_ones(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, [Destination("pacs", free_port(), "PACS")])
    text = agent.config_path.read_text().replace('modality = "OT"', 'modality = "OT"\niod = "ct"')
    agent.config_path.write_text(text)
    result = agent.cli("check-config")
    assert result.returncode == 1
    assert "[modality] iod" in result.stdout + result.stderr
    assert "multiframe-grayscale-word-sc" in result.stdout + result.stderr
