"""PS3.15 A.5.3 audit messages: each builder's XML validates against the A.5.1 schema
(tests/data/audit, checked with xmllint --relaxng) and carries what A.5.3 asks of it."""

from __future__ import annotations

import base64
import datetime
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.audit import messages as m

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "audit" / "audit-message.rng"
XMLLINT = "/usr/bin/xmllint"
CEST = datetime.timezone(datetime.timedelta(hours=2))
WHEN = datetime.datetime(2024, 5, 1, 12, 30, 15, 250_000, tzinfo=CEST)
NODE = m.Node("MODALITY1", "acq1.example", 4242, os_user="svc-agent")
PACS = m.AuditPeer("192.0.2.10", "PACS", 104)
SC = "1.2.840.10008.5.1.4.1.1.7"
STUDY = "1.2.826.0.1.3680043.2.1"


def schema_problems(documents: list[bytes], folder: Path) -> str:
    """xmllint's complaints about `documents` ("" when every one validates)."""
    paths = []
    for number, document in enumerate(documents):
        path = folder / f"message{number}.xml"
        path.write_bytes(document)
        paths.append(str(path))
    result = subprocess.run([XMLLINT, "--noout", "--relaxng", str(SCHEMA), *paths],
                            capture_output=True, text=True, check=False)
    return "" if result.returncode == 0 else result.stderr


def every_message() -> dict[str, bytes]:
    counts = {SC: 3}
    return {
        "start": m.application_activity(NODE, WHEN, start=True),
        "stop": m.application_activity(NODE, WHEN, start=False),
        "query": m.query(NODE, m.AuditPeer("ris.example", "RIS"), WHEN, b"\x08\x00\x60\x00"),
        "begin": m.begin_transferring(NODE, PACS, WHEN, patient_id="PID-1", study_uid=STUDY,
                                      sop_classes=counts, accession="ACC1"),
        "stored": m.instances_transferred(NODE, PACS, WHEN, patient_id="PID-1",
                                          study_uid=STUDY, sop_classes=counts,
                                          outcome=m.Outcome.SUCCESS),
        "committed": m.instances_transferred(NODE, PACS, WHEN, patient_id="PID-1",
                                             study_uid=STUDY, sop_classes=counts,
                                             outcome=m.Outcome.MINOR_FAILURE, committed=True,
                                             outcome_description="1 of 3 not committed"),
        "refused": m.security_alert(NODE, WHEN, type_code=m.NODE_AUTHENTICATION,
                                    detail="calling AE EVIL not allowed",
                                    peer=m.AuditPeer("198.51.100.7", "EVIL")),
        "tls": m.security_alert(NODE, WHEN, type_code=m.NODE_AUTHENTICATION,
                                detail="unknown CA", peer=m.AuditPeer("198.51.100.7")),
        "config": m.security_alert(NODE, WHEN, type_code=m.SOFTWARE_CONFIGURATION,
                                   detail="[audit] host changed",
                                   subject_uri="file:///etc/modality-agent/agent.toml",
                                   outcome=m.Outcome.SUCCESS),
        "mpps-create": m.procedure_record(NODE, WHEN, action="C", patient_id="PID-1",
                                          study_uid=STUDY, mpps_uid="1.2.3.4",
                                          sop_classes={SC: 0}, accession="ACC1"),
        "mpps-update": m.procedure_record(NODE, WHEN, action="U", patient_id="PID-1",
                                          study_uid=STUDY, mpps_uid="1.2.3.4",
                                          sop_classes=counts),
    }


def test_every_message_validates_against_the_ps3_15_schema(tmp_path: Path) -> None:
    assert schema_problems(list(every_message().values()), tmp_path) == ""


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    # sensitivity: the schema requires originalText on a coded value (A.5.1 CodedValueType)
    broken = every_message()["stored"].replace(b' originalText="Patient Number"', b"")
    assert "fails to validate" in schema_problems([broken], tmp_path)


def event(document: bytes) -> ET.Element:
    identification = ET.fromstring(document).find("EventIdentification")
    assert identification is not None
    return identification


@pytest.mark.parametrize(("name", "event_id", "action", "type_code"), [
    ("start", "110100", "E", "110120"), ("stop", "110100", "E", "110121"),
    ("query", "110112", "E", None), ("begin", "110102", "E", None),
    # A.5.3.7: a source that cannot know whether the receiver held copies says R, also after
    # storage commitment
    ("stored", "110104", "R", None), ("committed", "110104", "R", None),
    ("refused", "110113", "E", "110126"), ("config", "110113", "E", "110131"),
    ("mpps-create", "110111", "C", None), ("mpps-update", "110111", "U", None),
])
def test_event_identification(name: str, event_id: str, action: str,
                              type_code: str | None) -> None:
    identification = event(every_message()[name])
    assert identification.get("EventActionCode") == action
    assert identification.find("EventID").get("csd-code") == event_id  # type: ignore[union-attr]
    codes = [c.get("csd-code") for c in identification.findall("EventTypeCode")]
    assert codes == ([type_code] if type_code else [])


def test_event_time_carries_its_utc_offset() -> None:
    assert event(every_message()["start"]).get("EventDateTime") == \
        "2024-05-01T12:30:15.250+02:00"
    with pytest.raises(ValueError, match="UTC offset"):
        m.application_activity(NODE, WHEN.replace(tzinfo=None), start=True)


def test_the_agent_is_named_by_process_id_ae_title_and_host() -> None:
    root = ET.fromstring(every_message()["stored"])
    ours, theirs = root.findall("ActiveParticipant")
    assert ours.attrib == {"UserID": "4242", "AlternativeUserID": "AETITLES=MODALITY1",
                           "UserName": "modality-agent", "UserIsRequestor": "true",
                           "NetworkAccessPointID": "acq1.example",
                           "NetworkAccessPointTypeCode": "1"}
    assert ours.find("RoleIDCode").get("csd-code") == "110153"  # type: ignore[union-attr]
    assert theirs.get("UserID") == "PACS"
    assert theirs.get("NetworkAccessPointID") == "192.0.2.10"
    assert theirs.get("NetworkAccessPointTypeCode") == "2"
    assert theirs.find("RoleIDCode").get("csd-code") == "110152"  # type: ignore[union-attr]
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "acq1.example"


def test_transfer_names_patient_and_study_with_sop_classes_and_counts() -> None:
    root = ET.fromstring(every_message()["committed"])
    study, patient = root.findall("ParticipantObjectIdentification")
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == (STUDY, "2", "3")
    sop_class = study.find("ParticipantObjectDescription/SOPClass")
    assert sop_class is not None
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (SC, "3")
    detail = study.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "StorageCommitment"
    assert base64.b64decode(detail.get("value", "")) == b"committed"
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("PID-1", "1", "1")
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.get("csd-code") == "2"
    description = root.find("EventIdentification/EventOutcomeDescription")
    assert description is not None and description.text == "1 of 3 not committed"


def test_query_carries_the_identifier_and_its_transfer_syntax() -> None:
    root = ET.fromstring(every_message()["query"])
    sop = root.find("ParticipantObjectIdentification")
    assert sop is not None and sop.get("ParticipantObjectID") == m.MODALITY_WORKLIST_FIND
    query = sop.find("ParticipantObjectQuery")
    assert query is not None and base64.b64decode(query.text or "") == b"\x08\x00\x60\x00"
    detail = sop.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value", "")) == b"1.2.840.10008.1.2.1"


def test_security_alert_describes_its_subject() -> None:
    root = ET.fromstring(every_message()["refused"])
    peer = root.findall("ActiveParticipant")[1]
    assert peer.get("UserIsRequestor") == "false"       # A.5.3.11
    subject = root.find("ParticipantObjectIdentification")
    assert subject is not None and subject.get("ParticipantObjectID") == "198.51.100.7"
    detail = subject.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Alert Description"
    assert base64.b64decode(detail.get("value", "")) == b"calling AE EVIL not allowed"
    assert event(every_message()["refused"]).get("EventOutcomeIndicator") == "4"


def test_hostile_text_still_makes_a_valid_message(tmp_path: Path) -> None:
    # a peer's AE title or an error text is not ours: control characters, markup, line breaks
    nasty = "EV\x00IL<x>&\"\n\x1b[31m"
    documents = [
        m.security_alert(NODE, WHEN, type_code=m.NODE_AUTHENTICATION, detail=nasty,
                         peer=m.AuditPeer("10.0.0.1 x", nasty)),
        m.instances_transferred(NODE, m.AuditPeer("h", nasty), WHEN, patient_id=nasty,
                                study_uid=STUDY, sop_classes={SC: 1},
                                outcome=m.Outcome.SERIOUS_FAILURE, outcome_description=nasty),
    ]
    assert schema_problems(documents, tmp_path) == ""


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="C \\(create\\) or U"):
        m.procedure_record(NODE, WHEN, action="D", patient_id="P", study_uid=STUDY,
                           mpps_uid="1.2", sop_classes={})
    with pytest.raises(ValueError, match="NumberOfInstances"):
        m.begin_transferring(NODE, PACS, WHEN, patient_id="P", study_uid=STUDY,
                             sop_classes={SC: -1})


def test_every_message_is_one_line() -> None:
    # a receiver may escape line breaks (rsyslog writes #012), which breaks the XML
    for name, document in every_message().items():
        assert b"\n" not in document and b"\r" not in document, name
        assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>')
