"""The conformance statement against a real association: the agent's own association code
(agent.net.ae.associate) proposes the forwarder's contexts for the configured IOD to Orthanc;
what Orthanc accepts must be listed in the statement, and every SOP class the statement lists
as SCU for storage must have been proposed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom.presentation import build_context

from agent.config import AgentConfig, load_config
from agent.conformance import render_conformance, stored_objects
from agent.demo.orthanc import OrthancServer
from agent.forwarder import proposed_contexts
from agent.net.ae import AgentAE, associate

CASES = [
    ("secondary-capture", "explicit-little"),
    ("dx", "rle"),
    ("multiframe-grayscale-word-sc", "jpeg-ls-lossless"),
    ("video-photographic", "jpeg2000-lossless"),
]


def orthanc_config(tmp_path: Path, orthanc: OrthancServer, iod: str,
                   transfer_syntax: str) -> AgentConfig:
    path = tmp_path / f"{iod}.toml"
    path.write_text(f"""
[agent]
ae_title = "CONFAGENT"
spool_dir = "spool"
[device]
driver = "simulated"
[modality]
iod = "{iod}"
transfer_syntax = "{transfer_syntax}"
patient_orientation = ["L", "F"]
anatomic_region = ["51185008", "SCT", "Chest"]
[worklist]
host = "127.0.0.1"
port = {orthanc.dicom_port}
called_ae = "{orthanc.ae_title}"
[[destinations]]
name = "orthanc"
host = "127.0.0.1"
port = {orthanc.dicom_port}
called_ae = "{orthanc.ae_title}"
storage_commitment = true
""")
    return load_config(path)


def context_rows(markdown: str, caption_start: str) -> set[tuple[str, str]]:
    """(abstract syntax UID, transfer syntax UID) of the table after `caption_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(caption_start))
    rows: set[tuple[str, str]] = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) > 3 and cells[1].startswith("1.2."):
            rows.add((cells[1], cells[3]))
    return rows


def negotiate(config: AgentConfig, orthanc: OrthancServer,
              contexts: tuple[tuple[str, tuple[str, ...]], ...]) -> set[tuple[str, str]]:
    """Associate with Orthanc as the agent does and return what it accepted."""
    ae = AgentAE(config.agent.ae_title)
    assoc = associate(ae, "127.0.0.1", orthanc.dicom_port, orthanc.ae_title,
                      contexts=[build_context(abstract, list(syntaxes))
                                for abstract, syntaxes in contexts])
    try:
        return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts}
    finally:
        assoc.release()


@pytest.mark.parametrize(("iod", "transfer_syntax"), CASES)
def test_orthanc_accepts_only_what_the_statement_lists(
        tmp_path: Path, orthanc: OrthancServer, iod: str, transfer_syntax: str) -> None:
    config = orthanc_config(tmp_path, orthanc, iod, transfer_syntax)
    statement = render_conformance(config)
    listed = context_rows(statement, "Proposed presentation contexts, destination `orthanc`")
    # what the forwarder proposes for a batch holding every kind of object this config sends
    pairs = [(o.sop_class_uid, o.transfer_syntax_uid) for o in stored_objects(config)]
    contexts = proposed_contexts(pairs, storage_commitment=True)
    proposed = {(abstract, ts) for abstract, syntaxes in contexts for ts in syntaxes}
    accepted = negotiate(config, orthanc, contexts)
    assert accepted, "Orthanc accepted nothing"
    assert accepted <= listed, f"accepted but not in the statement: {accepted - listed}"
    # every storage SOP class the statement lists as SCU was proposed
    assert {abstract for abstract, _ in listed} == {abstract for abstract, _ in proposed}
    assert listed == proposed

