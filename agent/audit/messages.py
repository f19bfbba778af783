"""DICOM audit messages (PS3.15 A.5.3) as XML following the schema of PS3.15 A.5.1.

Pure: every value (times, process id, host names) is an argument; no sockets, files or clock
reads, so a message can be checked byte by byte and against the schema
(tests/data/audit/audit-message.rng). One builder per message of A.5.3, each returning the UTF-8
XML document.

Conventions this module follows, from PS3.15 A.5.2 (the conformance statement lists them,
docs/audit.md):

- the agent is an ActiveParticipant with UserID = its process id (A.5.2.1: "the process ID as
  used within the local operating system in the local system logs"), AlternativeUserID =
  ``AETITLES=<our AE title>`` (A.5.2.2), UserName = the process name (A.5.2.3) and its host name
  as NetworkAccessPointID (one name for every message, A.5.2.4);
- a DICOM peer is an ActiveParticipant with UserID = its AE title (its process is unknown to
  us), AlternativeUserID = ``AETITLES=<its AE title>`` and its host as NetworkAccessPointID;
- EventDateTime carries the UTC offset (A.5.2.5);
- the schema requires a ParticipantObjectName or ParticipantObjectQuery in every participant
  object: a study's name is its Study Instance UID, a patient's is the patient's name when
  given, else the patient ID (the agent passes IDs only: the operational log never sees these);
- coded values carry ``csd-code``, ``codeSystemName``, ``displayName`` and ``originalText`` (the
  schema requires originalText, older readers look for displayName).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

# --- codes (PS3.15 A.5.3, PS3.16 CID 400-series as used there; RFC 3881 for the numbers) ----------


@dataclass(frozen=True)
class Code:
    """A coded value: (code, coding scheme, meaning), as PS3.15 writes EV (110100, DCM, "...")."""

    code: str
    scheme: str
    meaning: str


# EventID
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")           # A.5.3.1
BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")  # A.5.3.3
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")   # A.5.3.7
PROCEDURE_RECORD = Code("110111", "DCM", "Procedure Record")                   # A.5.3.15
QUERY = Code("110112", "DCM", "Query")                                         # A.5.3.10
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")                       # A.5.3.11

# EventTypeCode
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
NETWORK_CONFIGURATION = Code("110128", "DCM", "Network Configuration")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")

# RoleIDCode
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")

# ParticipantObjectIDTypeCode
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
NODE_ID = Code("110182", "DCM", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.2.1): the SOP Class a worklist
#: Query message names (A.5.3.10)
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Explicit VR Little Endian, the transfer syntax the query identifier is encoded in by default
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1): report it honestly."""

    SUCCESS = 0
    MINOR_FAILURE = 4       # action restarted / mitigated, e.g. a refused peer
    SERIOUS_FAILURE = 8     # action terminated
    MAJOR_FAILURE = 12      # reporting application now unavailable


# ParticipantObjectTypeCode / ParticipantObjectTypeCodeRole (A.5.1.2.2)
_PERSON, _SYSTEM_OBJECT = "1", "2"
_ROLE_PATIENT, _ROLE_REPORT, _ROLE_MASTER_FILE = "1", "3", "5"


# --- who takes part ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """This agent, as every message names it."""

    ae_title: str
    host: str                   # one name for every message (A.5.2.4): FQDN or IP address
    process_id: int
    process_name: str = "modality-agent"
    #: the OS user that runs the agent, named as the Application Launcher at start and stop
    os_user: str = ""


@dataclass(frozen=True)
class AuditPeer:
    """The other side of an event: an archive, the RIS, or whoever connected to us."""

    host: str                   # host name or IP address
    ae_title: str = ""          # "" when not known (e.g. a TLS failure before any PDU)
    port: int | None = None


@dataclass(frozen=True)
class _Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_user_id: str = ""
    user_name: str = ""
    access_point: str = ""


def _node_participant(node: Node, requestor: bool, role: Code | None) -> _Participant:
    return _Participant(str(node.process_id), requestor, role, f"AETITLES={node.ae_title}",
                        node.process_name, node.host)


def _peer_participant(peer: AuditPeer, requestor: bool, role: Code | None) -> _Participant:
    alternative = f"AETITLES={peer.ae_title}" if peer.ae_title else ""
    return _Participant(peer.ae_title or peer.host, requestor, role, alternative, "", peer.host)


# --- XML helpers ------------------------------------------------------------------------------

# characters XML 1.0 does not allow (section 2.2); a peer's AE title or an error text could carry
# them, and one would make the whole message unreadable
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _token(value: str) -> str:
    # xsd:token has no line breaks, tabs or runs of spaces; collapse rather than reject
    return " ".join(_text(value).split())


def _coded(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme,
                                "displayName": code.meaning, "originalText": code.meaning})


def _timestamp(when: datetime.datetime) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("audit EventDateTime must carry a UTC offset (PS3.15 A.5.2.5), "
                         f"got a naive time {when.isoformat()}")
    return when.isoformat(timespec="milliseconds")


def _access_point_type(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "1"      # machine name, including DNS name
    return "2"          # IP address


_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class _Event:
    event_id: Code
    action: str
    when: datetime.datetime
    outcome: Outcome
    type_code: Code | None = None
    outcome_description: str = ""


def _message(event: _Event, participants: list[_Participant], node: Node,
             objects: list[ET.Element]) -> bytes:
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": _timestamp(event.when),
        "EventOutcomeIndicator": str(int(event.outcome)),
    })
    _coded(identification, "EventID", event.event_id)
    if event.type_code is not None:
        _coded(identification, "EventTypeCode", event.type_code)
    if event.outcome_description:
        ET.SubElement(identification, "EventOutcomeDescription").text = _token(
            event.outcome_description)
    for participant in participants:
        root.append(_participant_element(participant))
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _token(node.host)})
    # 2 = data acquisition device or instrument (A.5.1.2.1)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "2"})
    root.extend(objects)
    # one line: no line break after the declaration either, since a syslog receiver may escape
    # or split on it (rsyslog writes #012) and then the XML no longer parses
    return _DECLARATION + ET.tostring(root, encoding="unicode").encode("utf-8")


def _participant_element(participant: _Participant) -> ET.Element:
    attributes = {"UserID": _text(participant.user_id)}
    if participant.alternative_user_id:
        attributes["AlternativeUserID"] = _text(participant.alternative_user_id)
    if participant.user_name:
        attributes["UserName"] = _text(participant.user_name)
    attributes["UserIsRequestor"] = "true" if participant.requestor else "false"
    if participant.access_point:
        attributes["NetworkAccessPointID"] = _token(participant.access_point)
        attributes["NetworkAccessPointTypeCode"] = _access_point_type(participant.access_point)
    element = ET.Element("ActiveParticipant", attributes)
    if participant.role is not None:
        _coded(element, "RoleIDCode", participant.role)
    return element


def _object(object_id: str, id_type: Code, type_code: str, role: str | None, *,
            name: str = "", query: bytes | None = None,
            details: tuple[tuple[str, bytes], ...] = ()) -> ET.Element:
    attributes = {"ParticipantObjectID": _token(object_id),
                  "ParticipantObjectTypeCode": type_code}
    if role is not None:
        attributes["ParticipantObjectTypeCodeRole"] = role
    element = ET.Element("ParticipantObjectIdentification", attributes)
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    # the schema requires one of the two (A.5.1: "either a name or a query ID field")
    if query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = _b64(query)
    else:
        ET.SubElement(element, "ParticipantObjectName").text = _token(name or object_id)
    for kind, value in details:
        ET.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": _b64(value)})
    return element


def _patient(patient_id: str, patient_name: str) -> ET.Element:
    return _object(patient_id, PATIENT_NUMBER, _PERSON, _ROLE_PATIENT, name=patient_name)


def _study(study_uid: str, sop_classes: Mapping[str, int], *, accession: str = "",
           mpps_uid: str = "", details: tuple[tuple[str, bytes], ...] = ()) -> ET.Element:
    element = _object(study_uid, STUDY_INSTANCE_UID, _SYSTEM_OBJECT, _ROLE_REPORT,
                      name=study_uid, details=details)
    # SOPClass is MC: required once any field of the description is present (A.5.2); the
    # description is what tells a reviewer which kinds of objects and how many
    if sop_classes or accession or mpps_uid:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        if mpps_uid:
            ET.SubElement(description, "MPPS", {"UID": _token(mpps_uid)})
        if accession:
            ET.SubElement(description, "Accession", {"Number": _token(accession)})
        for uid, count in sop_classes.items():
            if count < 0:
                raise ValueError(f"SOP Class {uid}: NumberOfInstances must be >= 0, got {count}")
            ET.SubElement(description, "SOPClass",
                          {"UID": _token(uid), "NumberOfInstances": str(count)})
    return element


# --- the messages of A.5.3 --------------------------------------------------------------------


def application_activity(node: Node, when: datetime.datetime, *, start: bool,
                         outcome: Outcome = Outcome.SUCCESS) -> bytes:
    """Application Activity (A.5.3.1): the agent started or stopped.

    Raises
    ------
    ValueError
        If `when` has no UTC offset.
    """
    event = _Event(APPLICATION_ACTIVITY, "E", when, outcome,
                   APPLICATION_START if start else APPLICATION_STOP)
    participants = [_node_participant(node, False, ROLE_APPLICATION)]
    if node.os_user:
        participants.append(_Participant(node.os_user, True, ROLE_APPLICATION_LAUNCHER))
    return _message(event, participants, node, [])


def query(node: Node, peer: AuditPeer, when: datetime.datetime, identifier: bytes, *,
          transfer_syntax_uid: str = EXPLICIT_VR_LITTLE_ENDIAN,
          sop_class_uid: str = MODALITY_WORKLIST_FIND,
          outcome: Outcome = Outcome.SUCCESS, outcome_description: str = "") -> bytes:
    """Query (A.5.3.10): a worklist C-FIND we issued to `peer`.

    `identifier` is the C-FIND identifier as sent, encoded in `transfer_syntax_uid`; A.5.3.10
    makes it the ParticipantObjectQuery (base64) with a "TransferSyntax" detail.

    Raises
    ------
    ValueError
        If `when` has no UTC offset.
    """
    event = _Event(QUERY, "E", when, outcome, outcome_description=outcome_description)
    participants = [_node_participant(node, True, ROLE_SOURCE),
                    _peer_participant(peer, False, ROLE_DESTINATION)]
    sop_class = _object(sop_class_uid, SOP_CLASS_UID, _SYSTEM_OBJECT, _ROLE_REPORT,
                        query=identifier,
                        details=(("TransferSyntax", transfer_syntax_uid.encode("ascii")),))
    return _message(event, participants, node, [sop_class])


def begin_transferring(node: Node, peer: AuditPeer, when: datetime.datetime, *,
                       patient_id: str, study_uid: str, sop_classes: Mapping[str, int],
                       accession: str = "", patient_name: str = "",
                       outcome: Outcome = Outcome.SUCCESS) -> bytes:
    """Begin Transferring DICOM Instances (A.5.3.3): we start sending a study to `peer`.

    Raises
    ------
    ValueError
        If `when` has no UTC offset or a count is negative.
    """
    event = _Event(BEGIN_TRANSFERRING, "E", when, outcome)
    participants = [_node_participant(node, True, ROLE_SOURCE),
                    _peer_participant(peer, False, ROLE_DESTINATION)]
    objects = [_study(study_uid, sop_classes, accession=accession),
               _patient(patient_id, patient_name)]
    return _message(event, participants, node, objects)


def instances_transferred(node: Node, peer: AuditPeer, when: datetime.datetime, *,
                          patient_id: str, study_uid: str, sop_classes: Mapping[str, int],
                          outcome: Outcome, committed: bool = False, accession: str = "",
                          patient_name: str = "", outcome_description: str = "") -> bytes:
    """DICOM Instances Transferred (A.5.3.7): a study's instances reached `peer`.

    EventActionCode is always "R": A.5.3.7 reserves C and U for a receiver that knows whether
    it held copies, and tells a source that does not know to use R. Storage commitment does
    not change the code; `committed` adds a ParticipantObjectDetail "StorageCommitment" (an
    extension A.5 allows, documented in docs/audit.md) so the message sent when the commitment
    result arrives is told apart from the one sent when the objects were stored.

    Raises
    ------
    ValueError
        If `when` has no UTC offset or a count is negative.
    """
    event = _Event(INSTANCES_TRANSFERRED, "R", when, outcome,
                   outcome_description=outcome_description)
    participants = [_node_participant(node, True, ROLE_SOURCE),
                    _peer_participant(peer, False, ROLE_DESTINATION)]
    state = b"committed" if committed else b"stored"
    objects = [_study(study_uid, sop_classes, accession=accession,
                      details=(("StorageCommitment", state),)),
               _patient(patient_id, patient_name)]
    return _message(event, participants, node, objects)


def security_alert(node: Node, when: datetime.datetime, *, type_code: Code, detail: str,
                   peer: AuditPeer | None = None, subject_uri: str = "",
                   outcome: Outcome = Outcome.MINOR_FAILURE) -> bytes:
    """Security Alert (A.5.3.11): something refused or changed that a security officer must see.

    The alert subject is the peer node (Node ID = its address) or, for a configuration change,
    the file (URI, role master file); either carries the "Alert Description" detail A.5.3.11
    requires.

    Raises
    ------
    ValueError
        If `when` has no UTC offset.
    """
    event = _Event(SECURITY_ALERT, "E", when, outcome, type_code)
    participants = [_node_participant(node, True, None)]
    described = (("Alert Description", _text(detail).encode("utf-8")),)
    objects = []
    if peer is not None:
        # the peer performed what was refused; A.5.3.11: UserIsRequestor shall be false
        participants.append(_peer_participant(peer, False, None))
        objects.append(_object(peer.host, NODE_ID, _SYSTEM_OBJECT, None,
                               name=peer.ae_title or peer.host, details=described))
    if subject_uri:
        objects.append(_object(subject_uri, URI, _SYSTEM_OBJECT, _ROLE_MASTER_FILE,
                               details=described))
    if not objects:
        objects.append(_object(node.host, NODE_ID, _SYSTEM_OBJECT, None, details=described))
    return _message(event, participants, node, objects)


def procedure_record(node: Node, when: datetime.datetime, *, action: str, patient_id: str,
                     study_uid: str, mpps_uid: str, sop_classes: Mapping[str, int],
                     accession: str = "", patient_name: str = "",
                     outcome: Outcome = Outcome.SUCCESS,
                     outcome_description: str = "") -> bytes:
    """Procedure Record (A.5.3.15): an MPPS we created ("C") or updated ("U").

    Raises
    ------
    ValueError
        If `action` is not C or U, `when` has no UTC offset or a count is negative.
    """
    if action not in ("C", "U"):
        raise ValueError(f"procedure record action: expected C (create) or U (update), "
                         f"got {action!r}")
    event = _Event(PROCEDURE_RECORD, action, when, outcome,
                   outcome_description=outcome_description)
    participants = [_node_participant(node, True, None)]
    objects = [_study(study_uid, sop_classes, accession=accession, mpps_uid=mpps_uid),
               _patient(patient_id, patient_name)]
    return _message(event, participants, node, objects)
