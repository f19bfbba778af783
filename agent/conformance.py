"""The DICOM Conformance Statement of this configuration (`modality-agent conformance`), in the
structure of PS3.2 Annex A: overview, networking (implementation model, AE specifications,
network interfaces, configuration), media interchange, character sets, security, annexes (IOD
contents).

Generated from the tables the code runs on, so it cannot drift from what the agent does: the
presentation contexts from `agent.forwarder.proposed_contexts` and
`agent.listener.accepted_contexts`, the modules and attributes by running the IOD builder's own
module writers (`agent.iod.images`) on a synthetic order, the worklist keys from
`agent.worklist.query.build_identifier`, the TLS suites from `agent.net.tls`. The synthetic
order's values are never printed (only keywords, tags and fixed values), and the config holds no
patient data, so the statement holds none.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from enum import StrEnum
from types import MappingProxyType

import numpy as np
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from agent import __version__
from agent.acquisition import device_info
from agent.config import AgentConfig, DestinationSection, WorklistSection
from agent.errors import AgentError
from agent.forwarder import MAX_CONTEXTS, proposed_contexts
from agent.iod import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    KNOWN_TRANSFER_SYNTAXES,
    SC_IMAGE_STORAGE,
    SPECIFIC_CHARACTER_SET,
)
from agent.iod.images import ImageRequest, assemble, build_image
from agent.iod.iods import IODS, MODULES, IODSpec, ModuleUsage, writes
from agent.iod.modules import ConversionType
from agent.listener import (
    LISTENER_ACSE_TIMEOUT_S,
    LISTENER_MAX_ASSOCIATIONS,
    accepted_contexts,
)
from agent.listener import MAX_PDU_BYTES as LISTENER_MAX_PDU_BYTES
from agent.mpps.model import MPPS_SOP_CLASS_UID
from agent.net.ae import (
    ACSE_TIMEOUT_S,
    CONNECTION_TIMEOUT_S,
    MAX_ASSOCIATION_PDATA_BYTES,
    MAX_PDU_READ_BYTES,
    NETWORK_TIMEOUT_S,
    PDU_READ_TIMEOUT_S,
    REQUESTOR_MAX_PDU_BYTES,
    AgentAE,
)
from agent.net.tls import MAXIMUM_VERSION, PROFILES, TLS12_SUITES
from agent.records import (
    Code,
    DeviceInfo,
    MppsImageRefs,
    Order,
    OtherPatientID,
    SeriesContext,
    SOPReference,
)
from agent.worklist.charset import DEFAULT_FALLBACK
from agent.worklist.query import MODALITY_WORKLIST_FIND, BroadQuery, build_identifier
from drivers.frame import Frame

#: the formats `render_conformance` writes
FORMATS: tuple[str, ...] = ("md", "html")

#: the transfer syntaxes the worklist C-FIND and the MPPS N-CREATE/N-SET associations propose,
#: in this order (agent.worklist.query.query_worklist, agent.mpps.client.MppsClient._send_round)
WORKLIST_TRANSFER_SYNTAXES: tuple[str, ...] = (str(ExplicitVRLittleEndian),
                                               str(ImplicitVRLittleEndian))
MPPS_TRANSFER_SYNTAXES: tuple[str, ...] = WORKLIST_TRANSFER_SYNTAXES
#: C-ECHO (agent.net.echo) proposes Verification with pynetdicom's default transfer syntaxes
ECHO_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(str(uid) for uid in DEFAULT_TRANSFER_SYNTAXES)
#: DICOM Application Context Name (PS3.7 A.2.1)
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class ConformanceError(AgentError, ValueError):
    """The statement cannot be generated (unknown format, or a table of the code is missing a
    row the statement needs)."""


# --- the document model: both formats render the same sections ---------------------------------

@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


#: a paragraph (text) or a table
Block = str | Table


@dataclass(frozen=True)
class Section:
    number: str                      #: "4.2.1", the PS3.2 Annex A numbering
    title: str
    blocks: tuple[Block, ...] = ()


# --- what the agent negotiates ------------------------------------------------------------------

@dataclass(frozen=True)
class StoredObject:
    """One kind of object the agent sends: its SOP class, the transfer syntax it is spooled in,
    and when it is sent."""

    sop_class_uid: str
    transfer_syntax_uid: str
    when: str


def stored_objects(config: AgentConfig) -> tuple[StoredObject, ...]:
    """The objects the agent creates and sends with this config (what the forwarder's
    associations carry), in the syntax each is spooled in."""
    iod = IODS[config.modality.iod]
    syntax = KNOWN_TRANSFER_SYNTAXES[config.modality.transfer_syntax]
    objects = [StoredObject(iod.sop_class_uid, syntax,
                            f"every acquisition ([modality] iod = {iod.name})")]
    # the selftest object and watch-folder images: Secondary Capture in Explicit VR LE
    # (agent.station.Station.store_test_object, agent.watchfolder)
    explicit = str(ExplicitVRLittleEndian)
    objects.append(StoredObject(SC_IMAGE_STORAGE, explicit,
                                "`selftest --store-test-object` (a marked test image)"))
    if config.watch_folder is not None:
        objects.append(StoredObject(SC_IMAGE_STORAGE, explicit,
                                    "PNG/JPEG images dropped in the watch folder"))
    return tuple(objects)


def storage_contexts(config: AgentConfig,
                     destination: DestinationSection) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Every presentation context an association to `destination` may propose for the objects
    of `stored_objects` (the forwarder proposes a subset per batch, by the same function)."""
    pairs = [(o.sop_class_uid, o.transfer_syntax_uid) for o in stored_objects(config)]
    return proposed_contexts(pairs, storage_commitment=destination.storage_commitment)


@dataclass(frozen=True)
class SopClassRole:
    """One row of the overview: a SOP class, our role, and why."""

    sop_class_uid: str
    role: str                       #: "SCU" or "SCP"
    service: str
    when: str


def _dimse(config: AgentConfig) -> list[DestinationSection]:
    """The DIMSE destinations: a stow-rs one has no association, AE title or contexts
    (it is described under DICOMweb)."""
    return [d for d in config.destinations if d.kind == "dimse"]


def sop_class_roles(config: AgentConfig) -> tuple[SopClassRole, ...]:
    """Every SOP class the agent uses with this config, as SCU or SCP."""
    rows: list[SopClassRole] = []
    seen: set[str] = set()
    for obj in stored_objects(config):
        if obj.sop_class_uid not in seen:
            seen.add(obj.sop_class_uid)
            rows.append(SopClassRole(obj.sop_class_uid, "SCU", "Storage", obj.when))
    committing = [d.name for d in config.destinations if d.storage_commitment]
    if committing:
        rows.append(SopClassRole(str(StorageCommitmentPushModel), "SCU",
                                 "Storage Commitment (N-ACTION)",
                                 f"destinations {', '.join(committing)}"))
        rows.append(SopClassRole(str(StorageCommitmentPushModel), "SCP",
                                 "Storage Commitment (N-EVENT-REPORT received)",
                                 "listener, and the sending association"))
    if config.worklist is not None:
        rows.append(SopClassRole(str(MODALITY_WORKLIST_FIND), "SCU", "Basic Worklist (C-FIND)",
                                 "[worklist]"))
    if config.mpps is not None:
        rows.append(SopClassRole(MPPS_SOP_CLASS_UID, "SCU",
                                 "Modality Performed Procedure Step (N-CREATE, N-SET)", "[mpps]"))
    rows.append(SopClassRole(str(Verification), "SCU", "Verification (C-ECHO)",
                             "`echo` and `selftest`"))
    rows.append(SopClassRole(str(Verification), "SCP", "Verification (C-ECHO)", "listener"))
    return tuple(rows)


def proposed_by_activity(config: AgentConfig) -> tuple[tuple[str, str, str, str], ...]:
    """(activity, abstract syntax, transfer syntax, role) of every context the agent proposes
    with this config, one row per transfer syntax."""
    rows: list[tuple[str, str, str, str]] = []
    for destination in _dimse(config):
        for abstract, syntaxes in storage_contexts(config, destination):
            for syntax in syntaxes:
                rows.append((f"send to {destination.name}", abstract, syntax, "SCU"))
    if config.worklist is not None:
        rows += [("worklist query", str(MODALITY_WORKLIST_FIND), ts, "SCU")
                 for ts in WORKLIST_TRANSFER_SYNTAXES]
    if config.mpps is not None:
        rows += [("MPPS", MPPS_SOP_CLASS_UID, ts, "SCU") for ts in MPPS_TRANSFER_SYNTAXES]
    rows += [("verification", str(Verification), ts, "SCU") for ts in ECHO_TRANSFER_SYNTAXES]
    return tuple(rows)


# --- IOD contents: what each module writes, and where each value comes from ----------------------

class Source(StrEnum):
    WORKLIST = "worklist"
    CONFIG = "config"
    DEVICE = "device"
    GENERATED = "generated"
    FIXED = "fixed"
    MPPS = "MPPS"


@dataclass(frozen=True)
class AttributeSource:
    kind: Source
    detail: str


def _src(kind: Source, detail: str) -> AttributeSource:
    return AttributeSource(kind, detail)


_PATIENT = "worklist item; unscheduled: entered by the operator"
_ORDER = "worklist item; empty or absent when unscheduled (no dummy values, IHE SWF)"
_FRAME = "the device's frame"

#: where the value of every top-level attribute a module writer adds comes from (a unit test
#: fails when a writer adds an attribute that has no row here)
ATTRIBUTE_SOURCES: dict[str, AttributeSource] = {
    "PatientName": _src(Source.WORKLIST, _PATIENT),
    "PatientID": _src(Source.WORKLIST, _PATIENT),
    "IssuerOfPatientID": _src(Source.WORKLIST, _ORDER),
    "PatientBirthDate": _src(Source.WORKLIST, _PATIENT),
    "PatientSex": _src(Source.WORKLIST, _PATIENT),
    "OtherPatientIDsSequence": _src(Source.WORKLIST, _ORDER),
    "AdmissionID": _src(Source.WORKLIST, _ORDER),
    "StudyInstanceUID": _src(Source.WORKLIST, "worklist item; unscheduled: generated"),
    "AccessionNumber": _src(Source.WORKLIST, _ORDER),
    "ReferringPhysicianName": _src(Source.WORKLIST, _ORDER),
    "StudyDescription": _src(Source.WORKLIST, "Requested Procedure Description; " + _ORDER),
    "ProcedureCodeSequence": _src(Source.WORKLIST, "Requested Procedure Code Sequence; "
                                  + _ORDER),
    "ReferencedStudySequence": _src(Source.WORKLIST, _ORDER),
    "RequestAttributesSequence": _src(Source.WORKLIST, "Requested Procedure ID, Accession "
                                      "Number, Study Instance UID, SPS ID and description, "
                                      "codes; absent when unscheduled"),
    "StudyDate": _src(Source.GENERATED, "start of the study's first acquisition"),
    "StudyTime": _src(Source.GENERATED, "start of the study's first acquisition"),
    "StudyID": _src(Source.GENERATED, "by the agent"),
    "Modality": _src(Source.CONFIG, "[modality] modality, unless the IOD fixes it"),
    "SeriesInstanceUID": _src(Source.GENERATED, "one series per acquisition"),
    "SeriesNumber": _src(Source.GENERATED, "by the agent"),
    "SeriesDate": _src(Source.GENERATED, "start of the acquisition"),
    "SeriesTime": _src(Source.GENERATED, "start of the acquisition"),
    "Laterality": _src(Source.FIXED, "side unknown"),
    "ReferencedPerformedProcedureStepSequence": _src(Source.MPPS, "the MPPS instance the "
                                                     "agent created ([mpps])"),
    "PerformedProcedureStepID": _src(Source.MPPS, "the agent's MPPS ([mpps])"),
    "PerformedProcedureStepStartDate": _src(Source.MPPS, "the agent's MPPS ([mpps])"),
    "PerformedProcedureStepStartTime": _src(Source.MPPS, "the agent's MPPS ([mpps])"),
    "PerformedProcedureStepDescription": _src(Source.MPPS, "the agent's MPPS ([mpps])"),
    "PresentationIntentType": _src(Source.FIXED, ""),
    "Manufacturer": _src(Source.CONFIG, "[modality] manufacturer"),
    "InstitutionName": _src(Source.CONFIG, "[modality] institution_name (absent when empty)"),
    "StationName": _src(Source.CONFIG, "[modality] station_name"),
    "ManufacturerModelName": _src(Source.CONFIG, "[modality] model_name"),
    "DeviceSerialNumber": _src(Source.CONFIG, "[modality] device_serial_number"),
    "SoftwareVersions": _src(Source.GENERATED, "the agent's version"),
    "ConversionType": _src(Source.FIXED, "WSD for the selftest object"),
    "AcquisitionDateTime": _src(Source.DEVICE, "time of the first frame"),
    "ContentDate": _src(Source.DEVICE, "time of the first frame"),
    "ContentTime": _src(Source.DEVICE, "time of the first frame"),
    "InstanceNumber": _src(Source.GENERATED, "order within the series"),
    "PatientOrientation": _src(Source.CONFIG, "DX: [modality] patient_orientation or the "
                               "device; otherwise empty"),
    "ImageType": _src(Source.FIXED, ""),
    "BurnedInAnnotation": _src(Source.FIXED, ""),
    "LossyImageCompression": _src(Source.FIXED, "lossless transfer syntaxes only"),
    "PresentationLUTShape": _src(Source.FIXED, ""),
    "RescaleIntercept": _src(Source.FIXED, ""),
    "RescaleSlope": _src(Source.FIXED, ""),
    "RescaleType": _src(Source.FIXED, ""),
    "SamplesPerPixel": _src(Source.DEVICE, _FRAME),
    "PhotometricInterpretation": _src(Source.DEVICE, _FRAME),
    "Rows": _src(Source.DEVICE, _FRAME),
    "Columns": _src(Source.DEVICE, _FRAME),
    "BitsAllocated": _src(Source.DEVICE, _FRAME),
    "BitsStored": _src(Source.DEVICE, _FRAME),
    "HighBit": _src(Source.DEVICE, _FRAME),
    "PixelRepresentation": _src(Source.FIXED, "unsigned"),
    "PlanarConfiguration": _src(Source.FIXED, "RGB only"),
    "PixelData": _src(Source.DEVICE, "the frames"),
    "PixelSpacing": _src(Source.DEVICE, "when the device reports it"),
    "ImagerPixelSpacing": _src(Source.DEVICE, "the detector pitch the device reports"),
    "NumberOfFrames": _src(Source.DEVICE, "frames of the acquisition"),
    "FrameIncrementPointer": _src(Source.FIXED, "Frame Time or Frame Time Vector"),
    "FrameTime": _src(Source.DEVICE, "the frames' timestamps"),
    "RecommendedDisplayFrameRate": _src(Source.DEVICE, "the frames' timestamps"),
    "WindowCenter": _src(Source.DEVICE, "full range of the frame's bits stored"),
    "WindowWidth": _src(Source.DEVICE, "full range of the frame's bits stored"),
    "PixelIntensityRelationship": _src(Source.FIXED, ""),
    "PixelIntensityRelationshipSign": _src(Source.FIXED, ""),
    "DetectorType": _src(Source.FIXED, "unknown"),
    "ImageLaterality": _src(Source.FIXED, "unknown"),
    "AnatomicRegionSequence": _src(Source.CONFIG, "[modality] anatomic_region"),
    "KVP": _src(Source.DEVICE, "device parameter kvp, when reported"),
    "ExposureTime": _src(Source.DEVICE, "device parameter exposure_ms, when reported"),
    "ExposureTimeInuS": _src(Source.DEVICE, "device parameter exposure_ms, when reported"),
    "Exposure": _src(Source.DEVICE, "device parameter mas, when reported"),
    "ExposureInuAs": _src(Source.DEVICE, "device parameter mas, when reported"),
    "AcquisitionContextSequence": _src(Source.FIXED, ""),
    "SpecificCharacterSet": _src(Source.FIXED, "UTF-8"),
    "SOPClassUID": _src(Source.CONFIG, "[modality] iod"),
    "SOPInstanceUID": _src(Source.GENERATED, "fixed before the object is queued; the same on "
                           "every resend"),
    "InstanceCreationDate": _src(Source.DEVICE, "time of the first frame"),
    "InstanceCreationTime": _src(Source.DEVICE, "time of the first frame"),
    "TimezoneOffsetFromUTC": _src(Source.GENERATED, "this machine's zone at the first frame"),
}

#: a synthetic, fully populated order: it makes every conditional attribute appear. Its values
#: are never printed (a test checks); only keywords and the sources above are
_SAMPLE_ORDER = Order(
    patient_name="SYNTHETIC^ORDER", patient_id="SYNTHETIC-ID", patient_birth_date="19000101",
    patient_sex="O", issuer_of_patient_id="SYNTHETIC", study_instance_uid="2.25.1",
    accession_number="SYNTHETIC", requested_procedure_id="SYNTHETIC",
    requested_procedure_description="SYNTHETIC", referring_physician_name="SYNTHETIC^REF",
    sps_id="SYNTHETIC", sps_description="SYNTHETIC", scheduled=True,
    other_patient_ids=(OtherPatientID("SYNTHETIC", "SYNTHETIC"),),
    referenced_studies=(SOPReference("1.2.840.10008.3.1.2.3.1", "2.25.2"),),
    requested_procedure_codes=(Code("SYNTHETIC", "99SYN", "Synthetic"),),
    scheduled_protocol_codes=(Code("SYNTHETIC", "99SYN", "Synthetic"),),
    admission_id="SYNTHETIC",
    performed_procedure_step=MppsImageRefs(MPPS_SOP_CLASS_UID, "2.25.3", "SYNTHETIC",
                                           "19000101", "000000", "SYNTHETIC"))
_SAMPLE_SERIES = SeriesContext("2.25.1", "2.25.4", "1", 1, "19000101000000", "19000101000000")
_SAMPLE_INSTANCE_UID = "2.25.5"
_SAMPLE_REGION = Code("51185008", "SCT", "Chest")
_SAMPLE_ORIENTATION = ("L", "F")


def _sample_order(*, scheduled: bool, mpps: bool) -> Order:
    order = _SAMPLE_ORDER
    if not scheduled:
        # the unscheduled case: patient from the operator, nothing else (IHE SWF)
        order = Order(patient_name=order.patient_name, patient_id=order.patient_id)
    if not mpps:
        order = dataclasses.replace(order, performed_procedure_step=None)
    return order


def _sample_frames(spec: IODSpec) -> tuple[Frame, ...]:
    """Frames the IOD accepts, reporting every device parameter (so that every conditional
    module and attribute is written): two for a multi-frame IOD, so that Cine appears."""
    count = 1 if spec.max_frames == 1 else max(2, spec.min_frames)
    photometric = spec.pixels.photometric[0]
    bits_allocated = spec.pixels.bits_allocated[0]
    dtype = np.uint8 if bits_allocated == 8 else np.uint16
    shape = (4, 4, 3) if photometric == "RGB" else (4, 4)
    bits_stored = min(spec.pixels.bits_stored[1], bits_allocated)
    parameters = MappingProxyType({"kvp": 70.0, "exposure_ms": 20.0, "mas": 10.0})
    return tuple(Frame(np.zeros(shape, dtype), bits_stored, photometric,  # type: ignore[arg-type]
                       t_mono=i * 0.04, t_wall=1.0e9 + i * 0.04, sequence_number=i,
                       pixel_spacing_mm=(0.5, 0.5), device_parameters=parameters)
                 for i in range(count))


@dataclass(frozen=True)
class ModuleContents:
    row: ModuleUsage
    keywords: tuple[str, ...]            #: top-level attributes its writer adds
    fixed_values: dict[str, str]         #: keyword -> value, for Source.FIXED attributes


def iod_contents(spec: IODSpec, device: DeviceInfo, *, scheduled: bool = True,
                 mpps: bool = True) -> tuple[ModuleContents, ...]:
    """For each module of `spec` the builder writes: the attributes it adds, found by running
    that module's writer alone on the synthetic order (and the whole builder once, so the
    synthetic inputs are known to be valid). `scheduled`: the order comes from a worklist;
    `mpps`: the images reference an MPPS (both as the config allows).

    Raises
    ------
    IODError
        If the synthetic inputs no longer satisfy the builder (a test catches it first).
    """
    frames = _sample_frames(spec)
    order = _sample_order(scheduled=scheduled, mpps=mpps)
    orientation = _SAMPLE_ORIENTATION if spec.patient_orientation_required else None
    region = None if spec.anatomic_region == "unused" else _SAMPLE_REGION
    build_image(spec.name, frames, order=order, device=device, series=_SAMPLE_SERIES,
                instance_number=1, sop_instance_uid=_SAMPLE_INSTANCE_UID, tz=UTC,
                patient_orientation=orientation, anatomic_region=region)
    contents: list[ModuleContents] = []
    for row in spec.modules:
        if not writes(spec, row.key, frames):
            contents.append(ModuleContents(row, (), {}))
            continue
        request = ImageRequest(
            iod=dataclasses.replace(spec, modules=(row,)), frames=frames, order=order,
            device=device, series=_SAMPLE_SERIES, instance_number=1,
            sop_instance_uid=_SAMPLE_INSTANCE_UID, conversion=ConversionType.DIGITAL_INTERFACE,
            derived=False, content_datetime="19000101000000", timezone_offset="+0000",
            patient_orientation=orientation, anatomic_region=region)
        ds = assemble(request)
        keywords = tuple(element.keyword for element in ds if element.keyword)
        fixed = {kw: _fixed_value(ds, kw) for kw in keywords
                 if _source_of(kw, spec).kind is Source.FIXED}
        contents.append(ModuleContents(row, keywords, fixed))
    return tuple(contents)


def _fixed_value(ds: Dataset, keyword: str) -> str:
    element = ds[keyword]
    if element.VR == "SQ":
        return "empty" if len(element.value) == 0 else f"{len(element.value)} item(s)"
    if keyword == "FrameIncrementPointer":
        return dictionary_description(int(element.value))
    value = element.value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return "\\".join(str(v) for v in value)
    return str(value) if str(value) else "empty"


def _source_of(keyword: str, spec: IODSpec) -> AttributeSource:
    if keyword == "Modality" and spec.modality is not None:
        return AttributeSource(Source.FIXED, f"the IOD fixes it ({spec.title})")
    source = ATTRIBUTE_SOURCES.get(keyword)
    if source is None:
        raise ConformanceError(f"conformance: attribute {keyword} has no row in "
                               "agent.conformance.ATTRIBUTE_SOURCES (where does it come from?)")
    return source


# --- sections -----------------------------------------------------------------------------------

def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else "(unnamed)"


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return "" if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _overview(config: AgentConfig) -> Section:
    roles = sop_class_roles(config)
    by_class: dict[str, set[str]] = {}
    for row in roles:
        by_class.setdefault(row.sop_class_uid, set()).add(row.role)
    rows = tuple((_uid_name(uid), uid, _yes("SCU" in r), _yes("SCP" in r))
                 for uid, r in by_class.items())
    return Section("1", "Overview", (
        f"modality-agent {__version__} is the Acquisition Modality of a medical imaging device "
        "(IHE Scheduled Workflow): it turns the device's frames into DICOM objects, stores "
        "them to the configured archives with Storage Commitment, and, where configured, "
        "queries the modality worklist and reports Modality Performed Procedure Steps. This "
        f"statement was generated from the configuration file `{config.path.name}`; it "
        "describes that configuration only.",
        Table(("SOP Class", "UID", "User of Service (SCU)", "Provider of Service (SCP)"), rows),
        "No media interchange. No private SOP classes or transfer syntaxes.",
    ))


def _implementation_model(config: AgentConfig) -> list[Section]:
    ae = config.agent.ae_title
    flow = [
        f"One Application Entity, `{ae}`, in one daemon process (`modality-agent run`):",
        "- Acquisition: the device's frames become objects of the configured IOD, written to "
        "a durable queue (spool) before anything is sent.",
        f"- Sending: {sum(d.max_associations for d in _dimse(config))} sending "
        "process(es) (`max_associations` per destination), each with one association at a "
        "time: C-STORE of queued objects, then a Storage Commitment request (N-ACTION) on "
        "the same association when the destination asks for commitment.",
        f"- Listener on {config.listener.host}:{config.listener.port}: accepts Storage "
        "Commitment reports (N-EVENT-REPORT) and C-ECHO from the configured archives only.",
    ]
    if config.worklist is not None:
        flow.append(f"- Worklist SCU: C-FIND to {config.worklist.called_ae} every "
                    f"{config.worklist.refresh_s:g} s and when the operator asks.")
    if config.mpps is not None:
        flow.append(f"- MPPS SCU: N-CREATE (IN PROGRESS) at the first frame, N-SET "
                    f"(COMPLETED or DISCONTINUED) to {config.mpps.called_ae}.")
    web = [d for d in config.destinations if d.kind == "stow-rs"]
    if web:
        flow.append("- DICOMweb (not DIMSE): STOW-RS (PS3.18 10.5) of the same queued objects, "
                    "unchanged, to " + ", ".join(f"`{d.name}` ({d.url})" for d in web)
                    + "; a destination with `verify = true` counts an object committed only "
                    "once a QIDO-RS lookup finds it (docs/stow-rs.md).")
    flow.append("- Verification SCU: `modality-agent echo` and `selftest` C-ECHO each "
                "configured peer.")
    sequencing = (
        "Worklist item selected (or unscheduled procedure) -> MPPS IN PROGRESS -> frames "
        "captured, objects queued -> C-STORE per destination -> N-ACTION (commitment request) "
        "-> N-EVENT-REPORT received (usually on a new association from the archive) -> "
        "object committed, deleted after the retention time. MPPS COMPLETED or DISCONTINUED "
        "lists every series. An object is resent with the same bytes and UIDs until stored; "
        "an archive outage delays, never loses, an object.")
    return [
        Section("4", "Networking"),
        Section("4.1", "Implementation model"),
        Section("4.1.1", "Application data flow", ("\n".join(flow),)),
        Section("4.1.2", "Functional definition of AEs", (
            f"`{ae}` initiates associations to store, request commitment, query the worklist, "
            "report MPPS and verify; it accepts associations for commitment reports and "
            "verification. The same AE title is used on every association.",)),
        Section("4.1.3", "Sequencing of real-world activities", (sequencing,)),
    ]


def _ts_rows(contexts: Iterable[tuple[str, Sequence[str]]], role: str,
             extra: str = "") -> tuple[tuple[str, ...], ...]:
    return tuple((_uid_name(abstract), abstract, _uid_name(ts), ts, role,
                  *([extra] if extra else []))
                 for abstract, syntaxes in contexts for ts in syntaxes)


_CONTEXT_HEADER = ("Abstract Syntax", "UID", "Transfer Syntax", "UID", "Role")


def _ae_specification(config: AgentConfig) -> list[Section]:
    ae_title = config.agent.ae_title
    roles = sop_class_roles(config)
    network_ae = AgentAE(ae_title)
    sections = [
        Section("4.2", "AE specifications"),
        Section("4.2.1", f"{ae_title} AE", (
            Table(("SOP Class", "UID", "Role", "Service", "Used for"),
                  tuple((_uid_name(r.sop_class_uid), r.sop_class_uid, r.role, r.service, r.when)
                        for r in roles)),)),
        Section("4.2.1.1", "Association policies", (
            Table(("Policy", "Value"), (
                ("Application Context Name", APPLICATION_CONTEXT),
                ("Maximum PDU size announced (associations we open)",
                 f"{REQUESTOR_MAX_PDU_BYTES} bytes"),
                ("Maximum PDU size announced (listener)", f"{LISTENER_MAX_PDU_BYTES} bytes"),
                ("Largest PDU read from any peer", f"{MAX_PDU_READ_BYTES} bytes"),
                *((f"Associations to {d.name} ({d.called_ae})",
                   f"at most {d.max_associations} at once (max_associations)")
                  for d in _dimse(config)),
                *((("Associations to the worklist SCP", "1 per query"),)
                  if config.worklist is not None else ()),
                *((("Associations to the MPPS SCP", "1 at a time"),)
                  if config.mpps is not None else ()),
                ("Associations accepted by the listener", f"at most {LISTENER_MAX_ASSOCIATIONS}"),
                ("Asynchronous operations window", "not supported (none negotiated: one "
                 "operation at a time)"),
                ("Presentation contexts per association", f"at most {MAX_CONTEXTS}"),
                ("Implementation Class UID (network)", str(network_ae.implementation_class_uid)),
                ("Implementation Version Name (network)",
                 str(network_ae.implementation_version_name)),
                ("Implementation Class UID (Part 10 files)", IMPLEMENTATION_CLASS_UID),
                ("Implementation Version Name (Part 10 files)", IMPLEMENTATION_VERSION_NAME),
                # the network identity is the agent's own (agent.implementation): say what it is
                # built on, for a peer's engineer who knows those libraries' behaviour
                ("DICOM libraries", "pynetdicom (associations, DIMSE), pydicom (data sets, "
                 "Part 10 files)"),
                ("TCP connection timeout", f"{CONNECTION_TIMEOUT_S:g} s"),
                ("ACSE timeout (associations we open)", f"{ACSE_TIMEOUT_S:g} s"),
                ("ACSE timeout (listener)", f"{LISTENER_ACSE_TIMEOUT_S:g} s"),
                *((f"DIMSE timeout to {d.name}", f"{d.dimse_timeout_s:g} s (dimse_timeout_s)")
                  for d in _dimse(config)),
                *(((("Worklist query deadline", f"{config.worklist.timeout_s:g} s in all "
                     "(timeout_s)"),)) if config.worklist is not None else ()),
                ("Network (idle) timeout", f"{NETWORK_TIMEOUT_S:g} s"),
                ("Listener: a PDU must arrive whole within", f"{PDU_READ_TIMEOUT_S:g} s"),
                ("Listener: P-DATA per association", f"at most {MAX_ASSOCIATION_PDATA_BYTES} "
                 "bytes"),
                *((f"Storage Commitment report deadline, {d.name}",
                   f"{d.commitment_timeout_s:g} s, then a new request with a new Transaction "
                   "UID (commitment_timeout_s)")
                  for d in config.destinations if d.storage_commitment),
            )),)),
    ]
    sections.append(_initiation(config))
    sections.append(Section("4.2.1.3", "Association acceptance policy", (
        "The listener accepts associations only from the addresses of the configured "
        "destinations, calling one of their AE titles ("
        + ", ".join(sorted({d.called_ae for d in _dimse(config)})) + f") and calling "
        f"`{ae_title}`; any other association is rejected. A Storage Commitment report is "
        "answered 0x0000 only after it is durably recorded. Default SCU/SCP roles are "
        "accepted (archives such as Orthanc propose the SCP role for the report association).",
        Table((*_CONTEXT_HEADER, "Extended Negotiation"),
              _ts_rows(accepted_contexts(), "SCP", "none")),
    )))
    return sections


def _initiation(config: AgentConfig) -> Section:
    blocks: list[Block] = [
        "Objects the agent sends, and the transfer syntax each is spooled in; an association "
        "proposes, for each object of its batch, the spooled syntax (so the file is sent "
        "unchanged) and, in a separate context, Implicit VR Little Endian (PS3.5 10.1), plus "
        "Storage Commitment Push Model when the destination asks for commitment. Imported "
        "DICOM files (`import`, the watch folder) keep their own SOP class and transfer "
        "syntax, proposed the same way.",
        Table(("Object", "SOP Class", "Transfer Syntax", "When"),
              tuple((_uid_name(o.sop_class_uid), o.sop_class_uid,
                     f"{_uid_name(o.transfer_syntax_uid)} {o.transfer_syntax_uid}", o.when)
                    for o in stored_objects(config))),
    ]
    for destination in _dimse(config):
        blocks.append(f"Proposed presentation contexts, destination `{destination.name}` "
                      f"({destination.called_ae} at {destination.host}:{destination.port}"
                      f"{', DICOM TLS' if destination.tls else ''}):")
        blocks.append(Table((*_CONTEXT_HEADER, "Extended Negotiation"),
                            _ts_rows(storage_contexts(config, destination), "SCU", "none")))
    blocks.append(
        "C-STORE status: 0x0000 and warnings (B000, B006, B007) count as stored; failures "
        "(A7xx out of resources is retried, A9xx and Cxxx are not) are kept with their reason; "
        "no answer (abort, timeout) is resent with backoff, the same object failing after "
        "repeated aborts. Storage Commitment: N-ACTION success means 'request received'; "
        "only the N-EVENT-REPORT commits. The report is accepted on the sending association "
        "too (SCP role for N-EVENT-REPORT there).")
    if config.worklist is not None:
        blocks += [f"Worklist query to {config.worklist.called_ae} at {config.worklist.host}:"
                   f"{config.worklist.port}:",
                   Table(_CONTEXT_HEADER, _ts_rows(
                       [(str(MODALITY_WORKLIST_FIND), WORKLIST_TRANSFER_SYNTAXES)], "SCU"))]
    if config.mpps is not None:
        blocks += [f"MPPS to {config.mpps.called_ae} at {config.mpps.host}:{config.mpps.port}:",
                   Table(_CONTEXT_HEADER, _ts_rows(
                       [(MPPS_SOP_CLASS_UID, MPPS_TRANSFER_SYNTAXES)], "SCU"))]
    blocks += ["Verification (C-ECHO) to each configured peer:",
               Table(_CONTEXT_HEADER, _ts_rows([(str(Verification), ECHO_TRANSFER_SYNTAXES)],
                                               "SCU"))]
    return Section("4.2.1.2", "Association initiation policy", tuple(blocks))


def _network_interfaces(config: AgentConfig) -> Section:
    rows = [("Listener (DICOM, inbound)", f"{config.listener.host}:{config.listener.port}",
             "DICOM TLS only" if config.listener.tls else "plain TCP")]
    rows += [(f"Destination {d.name} (DICOM)", f"{d.host}:{d.port}",
              "DICOM TLS" if d.tls else "plain TCP") for d in _dimse(config)]
    if config.worklist is not None:
        rows.append(("Worklist (DICOM)", f"{config.worklist.host}:{config.worklist.port}",
                     "DICOM TLS" if config.worklist.tls else "plain TCP"))
    if config.mpps is not None:
        rows.append(("MPPS (DICOM)", f"{config.mpps.host}:{config.mpps.port}",
                     "DICOM TLS" if config.mpps.tls else "plain TCP"))
    rows += [(f"Destination {d.name} (DICOMweb STOW-RS)", d.url,
              "HTTPS" if d.url.startswith("https:") else "HTTP")
             for d in config.destinations if d.kind == "stow-rs"]
    rows.append(("HTTP API and console (not DICOM)", f"{config.api.host}:{config.api.port}",
                 "HTTP, bearer token"))
    return Section("4.3", "Network interfaces", (
        "TCP/IP over whatever physical interface the host provides; IPv4 and IPv6 as the "
        "configured addresses are. TCP_NODELAY on every DICOM connection. No DHCP or DNS "
        "requirement beyond resolving the configured host names.",
        Table(("Interface", "Address", "Transport"), tuple(rows)),
    ))


def _configuration(config: AgentConfig) -> Section:
    titles = [("Local", config.agent.ae_title, f"{config.listener.host}:{config.listener.port}",
               "this station (listener)")]
    titles += [("Remote", d.called_ae, f"{d.host}:{d.port}", f"archive `{d.name}`")
               for d in _dimse(config)]
    if config.worklist is not None:
        titles.append(("Remote", config.worklist.called_ae,
                       f"{config.worklist.host}:{config.worklist.port}", "worklist SCP"))
    if config.mpps is not None:
        titles.append(("Remote", config.mpps.called_ae,
                       f"{config.mpps.host}:{config.mpps.port}", "MPPS SCP"))
    keys: list[tuple[str, str]] = []
    sections: list[tuple[str, object]] = [("[agent]", config.agent), ("[listener]",
                                                                     config.listener),
                                          ("[modality]", config.modality)]
    if config.worklist is not None:
        sections.append(("[worklist]", config.worklist))
    sections += [(f"[[destinations]] {d.name}", d) for d in config.destinations]
    if config.mpps is not None:
        sections.append(("[mpps]", config.mpps))
    if config.tls is not None:
        sections.append(("[tls]", config.tls))
    for label, section in sections:
        for field in dataclasses.fields(section):  # type: ignore[arg-type]
            value = getattr(section, field.name)
            if field.name in ("spool_dir", "log_level", "certificate", "private_key",
                              "ca_file"):
                continue             # site paths and logging: no effect on DICOM behaviour
            keys.append((f"{label} {field.name}", _show(value)))
    return Section("4.4", "Configuration", (
        "AE title / presentation address mapping (the archives must know the local AE title, "
        "host and listener port to send commitment reports):",
        Table(("Side", "AE Title", "Address", "Role"), tuple(titles)),
        "Configuration keys that change DICOM behaviour, with their values in this "
        "configuration (reference: docs/configuration.md):",
        Table(("Key", "Value"), tuple(keys)),
    ))


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value) if str(value) else '""'


def _character_sets(config: AgentConfig) -> Section:
    from pydicom.charset import python_encoding

    fallback = config.worklist.fallback_charsets if config.worklist is not None \
        else DEFAULT_FALLBACK
    terms = sorted(term for term in python_encoding if term)
    return Section("6", "Support of character sets", (
        f"Objects and MPPS messages the agent creates are encoded in {SPECIFIC_CHARACTER_SET} "
        "(UTF-8), so any name a worklist sends is kept as is.",
        "Worklist responses are decoded by the Specific Character Set (0008,0005) each one "
        "carries, strictly (an invalid byte refuses the item, never a replacement "
        "character). Supported terms, including ISO 2022 code extensions: "
        + ", ".join(terms) + "; no value means the default repertoire (ASCII).",
        "A response without (0008,0005) but with bytes above 0x7F is decoded with the "
        "fallback sets, in order: " + (", ".join(fallback) if fallback else
                                       "none (such a response is refused)")
        + " ([worklist] fallback_charsets).",
    ))


def _security(config: AgentConfig) -> Section:
    paths = [("listener", config.listener.tls)]
    paths += [(f"destination {d.name}", d.tls) for d in _dimse(config)]
    if config.worklist is not None:
        paths.append(("worklist", config.worklist.tls))
    if config.mpps is not None:
        paths.append(("MPPS", config.mpps.tls))
    blocks: list[Block] = []
    if config.tls is None:
        blocks.append("No [tls] section: every DICOM association is plain TCP.")
    else:
        profile = config.tls.profile
        blocks.append(
            f"DICOM TLS (PS3.15 Annex B), profile `{profile}` ({_PROFILE_NAMES[profile]}), "
            f"TLS 1.2 up to {_tls_version(profile)}; mutual authentication: our certificate "
            "is presented, each peer's is verified against the configured CA file (and its "
            "host name unless verify_hostname = false). No compression, no renegotiation; "
            "plaintext is never used as a fallback. TLS 1.2 cipher suites: "
            + ", ".join(TLS12_SUITES[profile]) + ".")
    blocks.append(Table(("Path", "DICOM TLS"), tuple((p, _yes(tls)) for p, tls in paths)))
    blocks.append("Profiles the agent supports: " + ", ".join(
        f"`{p}` ({_PROFILE_NAMES[p]})" for p in PROFILES) + ".")
    blocks.append(
        "Association level: the listener accepts only the configured archives' addresses and "
        "AE titles. Application level: the HTTP API on "
        f"{config.api.host}:{config.api.port} requires a bearer token (file mode 0600) when "
        "not on loopback, refuses cross-site requests and foreign Host headers; no DICOM "
        "service is offered through it.")
    audit = getattr(config, "audit", None)
    if audit is None:
        blocks.append("Audit trail (PS3.15 A.5): not available in this configuration (no "
                      "[audit] section).")
    else:
        blocks.append("Audit trail (PS3.15 A.5): DICOM audit messages over syslog to "
                      f"{getattr(audit, 'host', '?')}:{getattr(audit, 'port', '?')} "
                      f"({getattr(audit, 'transport', '?')}).")
    return Section("7", "Security", tuple(blocks))


_PROFILE_NAMES = {"bcp195-nd": "Non-Downgrading BCP 195, PS3.15 B.10",
                  "bcp195": "BCP 195, PS3.15 B.9",
                  "bcp195-extended": "Extended BCP 195, PS3.15 B.11"}


def _tls_version(profile: str) -> str:
    version = MAXIMUM_VERSION[profile]
    return "TLS 1.3" if version.name == "MAXIMUM_SUPPORTED" else version.name.replace(
        "TLSv1_", "TLS 1.")


def _iod_sections(config: AgentConfig) -> list[Section]:
    device = device_info(config.modality, f"modality-agent {__version__}")
    specs = [IODS[config.modality.iod]]
    if specs[0].sop_class_uid != SC_IMAGE_STORAGE:
        specs.append(IODS["secondary-capture"])     # selftest object, watch-folder images
    sections = [Section("8", "Annexes"), Section("8.1", "IOD contents", (
        "Created SOP instances, module by module, with the source of every attribute: "
        "worklist (the selected worklist item), config ([modality] keys), device (the frames "
        "and the parameters the device reports), generated (by the agent), fixed (the value "
        "shown), MPPS (the step the agent reports, when [mpps] is configured). Attributes "
        "from the worklist are absent or empty in the unscheduled case. The Secondary "
        "Capture test object of `selftest --store-test-object` has fixed patient, study and "
        "series descriptions saying it is a test, and Conversion Type WSD.",
        Table(("File Meta Information", "Value"), (
            ("Transfer Syntax UID", f"[modality] transfer_syntax = "
             f"{config.modality.transfer_syntax}"),
            ("Implementation Class UID", IMPLEMENTATION_CLASS_UID),
            ("Implementation Version Name", IMPLEMENTATION_VERSION_NAME))),
    ))]
    for index, spec in enumerate(specs, start=1):
        rows: list[tuple[str, ...]] = []
        for module in iod_contents(spec, device, scheduled=config.worklist is not None,
                                   mpps=config.mpps is not None):
            info = MODULES[module.row.key]
            if not module.keywords:
                rows.append((module.row.ie, f"{info.title} ({info.clause})",
                             module.row.usage.value, "not written", "", ""))
                continue
            for keyword in module.keywords:
                source = _source_of(keyword, spec)
                detail = source.detail
                if keyword in module.fixed_values:
                    value = module.fixed_values[keyword]
                    detail = f"{value}; {detail}" if detail else value
                rows.append((module.row.ie, f"{info.title} ({info.clause})",
                             module.row.usage.value,
                             f"{dictionary_description(keyword)} {_tag(keyword)}",
                             source.kind.value, detail))
        sections.append(Section(f"8.1.{index}", f"{spec.title} (PS3.3 {spec.clause}), SOP "
                                f"Class {spec.sop_class_uid}", (
            Table(("IE", "Module", "Usage", "Attribute", "Source", "Value / detail"),
                  tuple(rows)),)))
    if config.worklist is not None:
        sections.append(_worklist_keys(config, config.worklist))
    sections.append(Section("8.3", "Private attributes, coded terminology, extensions", (
        "No private attributes, no private SOP classes or transfer syntaxes, no standard "
        "extended or specialized SOP classes. Codes are copied from the worklist item, and "
        "the Anatomic Region code from [modality] anatomic_region.",)))
    return sections


def _worklist_keys(config: AgentConfig, worklist: WorklistSection) -> Section:
    """The C-FIND identifier the agent sends, from the query builder itself."""
    query = BroadQuery(config.agent.ae_title, config.modality.modality, date(2000, 1, 1))
    identifier = build_identifier(query)
    rows: list[tuple[str, str, str]] = []

    def walk(ds: Dataset, prefix: str) -> None:
        for element in ds:
            name = f"{prefix}{element.name} {_tag(element.keyword)}"
            if element.VR == "SQ":
                rows.append((name, "return key (sequence)", ""))
                for item in element.value:
                    walk(item, prefix + "> ")
                continue
            if element.keyword == "ScheduledProcedureStepStartDate":
                rows.append((name, "matching", f"today, from {worklist.days_before} days "
                             f"before to {worklist.days_after} after"))
            elif element.value not in ("", None):
                rows.append((name, "matching", str(element.value)))
            else:
                rows.append((name, "return key", ""))

    walk(identifier, "")
    return Section("8.2", "Usage of attributes from received IODs: worklist query keys", (
        "The Broad Worklist Query the agent sends (IHE Patient Based queries use the same "
        "return keys and match on patient or request):",
        Table(("Attribute", "Type of key", "Matching value"), tuple(rows)),
    ))


def conformance_sections(config: AgentConfig) -> tuple[Section, ...]:
    """The statement for `config`, as sections in PS3.2 Annex A order.

    Raises
    ------
    ConformanceError
        If the code's tables are inconsistent (an attribute without a source).
    IODError
        If the IOD builder refuses the synthetic inputs (a bug caught by the unit tests).
    """
    sections = [
        Section("", f"DICOM Conformance Statement: modality-agent {__version__}, AE "
                f"{config.agent.ae_title}"),
        _overview(config),
        Section("3", "Introduction", (
            "Audience: the hospital's PACS and integration staff. Terms as in PS3.2. Everything "
            "below follows from the configuration and the agent's own tables; regenerate it "
            "after changing the configuration (`modality-agent conformance`).",)),
        *_implementation_model(config),
        *_ae_specification(config),
        _network_interfaces(config),
        _configuration(config),
        Section("5", "Media interchange", ("Not supported.",)),
        _character_sets(config),
        _security(config),
        *_iod_sections(config),
    ]
    contents = Section("2", "Table of contents", ("\n".join(
        f"- {section.number} {section.title}" for section in sections
        if section.number and "." not in section.number),))
    return (sections[0], sections[1], contents, *sections[2:])


# --- rendering ----------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown(sections: Sequence[Section]) -> str:
    out: list[str] = []
    for section in sections:
        level = 1 if not section.number else min(6, 2 + section.number.count("."))
        heading = f"{section.number} {section.title}" if section.number else section.title
        out.append(f"{'#' * level} {heading}\n")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |"
                           for row in block.rows)
                out.append("")
            else:
                out.append(block + "\n")
    return "\n".join(out).rstrip("\n") + "\n"


def _html(sections: Sequence[Section]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(sections[0].title)}</title>",
           "<style>table{border-collapse:collapse}td,th{border:1px solid #999;"
           "padding:2px 6px;text-align:left}</style></head><body>"]
    for section in sections:
        level = 1 if not section.number else min(6, 2 + section.number.count("."))
        heading = f"{section.number} {section.title}" if section.number else section.title
        out.append(f"<h{level}>{html.escape(heading)}</h{level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>"
                                                   for h in block.header) + "</tr>")
                out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                           + "</tr>" for row in block.rows)
                out.append("</table>")
            else:
                lines = block.split("\n")
                items = [line[2:] for line in lines if line.startswith("- ")]
                text = [line for line in lines if not line.startswith("- ")]
                out.extend(f"<p>{html.escape(line)}</p>" for line in text)
                if items:
                    out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items)
                               + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_conformance(config: AgentConfig, fmt: str = "md") -> str:
    """The DICOM Conformance Statement for `config`, as Markdown ("md") or HTML ("html").

    Raises
    ------
    ConformanceError
        If `fmt` is not one of FORMATS, or the code's tables are inconsistent.
    """
    if fmt not in FORMATS:
        raise ConformanceError(f"conformance: --format: expected one of {', '.join(FORMATS)}, "
                               f"got {fmt!r}")
    sections = conformance_sections(config)
    return _markdown(sections) if fmt == "md" else _html(sections)


__all__ = [
    "ATTRIBUTE_SOURCES",
    "FORMATS",
    "ConformanceError",
    "Section",
    "Table",
    "conformance_sections",
    "iod_contents",
    "proposed_by_activity",
    "render_conformance",
    "sop_class_roles",
    "storage_contexts",
    "stored_objects",
]
