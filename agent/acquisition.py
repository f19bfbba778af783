"""Acquisition: frames from the driver → DICOM objects → the durable queue.

The only agent module that touches drivers (through drivers.registry). It never waits on the
network: an object is acknowledged as captured once the queue has it on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from agent.config import ModalitySection
from agent.errors import AcquisitionError, AgentError, IODError, QueueError, SpoolFullError
from agent.heartbeat import Heartbeat, stall_point
from agent.iod import (
    IODS,
    KNOWN_TRANSFER_SYNTAXES,
    MULTIFRAME_IODS,
    ConversionType,
    UIDSource,
    build_image,
    encode_part10,
    new_series_context,
    validate_image,
)
from agent.iod import anatomy as regions
from agent.iod.anatomy import Anatomy, AnatomyChoice
from agent.iod.dose_sr import IrradiationEvent
from agent.queue import NewObject, QueueStore
from agent.records import Code, DeviceInfo, Order, QueuedObject, SeriesContext
from drivers.base import Driver, DriverStatus
from drivers.errors import DriverError
from drivers.frame import Frame
from drivers.registry import create_driver

logger = logging.getLogger(__name__)

#: a frame later than this beyond the device's frame interval is a device fault
FRAME_TIMEOUT_S = 10.0
#: frames held between the device and the spool (2 s of a 1024x1024 16-bit run at 30 fps)
CAPTURE_BUFFER_FRAMES = 64
#: at most this many frames that waited in the buffer are queued in one transaction (4 of
#: 1024x1024 16-bit: 8 MB more in memory at once while the spool catches up)
SPOOL_GROUP_MAX = 4
#: SC Equipment Conversion Type (0008,0064) by driver: the simulated device makes synthetic
#: images, a frame grabber digitises video; otherwise pixels come over a digital interface
CONVERSION_TYPE_BY_DRIVER = {"simulated": ConversionType.SYNTHETIC_IMAGE,
                             "v4l2": ConversionType.DIGITIZED_VIDEO}


@dataclass(frozen=True)
class ImageSettings:
    """Which object the frames become, from `[modality]`."""

    iod: str = "secondary-capture"
    transfer_syntax: str = "explicit-little"
    patient_orientation: tuple[str, str] | None = None
    anatomic_region: Code | None = None

    @classmethod
    def from_config(cls, modality: ModalitySection) -> ImageSettings:
        orientation = modality.patient_orientation
        region = modality.anatomic_region
        return cls(
            iod=modality.iod, transfer_syntax=modality.transfer_syntax,
            patient_orientation=(orientation[0], orientation[1]) if orientation else None,
            anatomic_region=Code(region[0], region[1], region[2]) if region else None,
        )

    @property
    def multiframe(self) -> bool:
        return self.iod in MULTIFRAME_IODS

    @property
    def writes_laterality(self) -> bool:
        """Whether the objects carry Image Laterality (DX), so a side must be known."""
        return IODS[self.iod].image_laterality


@dataclass(frozen=True)
class CapturedObject:
    """An object that is durably queued (the acknowledgement `acquire` prints)."""

    queue_id: int
    sop_instance_uid: str
    frame_sequence_number: int
    sop_class_uid: str = ""
    irradiation_event_uid: str | None = None   #: (0008,3010) of an X-ray exposure's image


@dataclass(frozen=True)
class AcquisitionResult:
    study_instance_uid: str
    series_instance_uid: str
    objects: tuple[CapturedObject, ...]
    error: str = ""            # set when fewer frames than asked were captured
    dropped_frames: int = 0
    #: one per exposure whose technique values the device reported, in capture order: the
    #: procedure keeps them for its dose SR (each UID is also its image's (0008,3010))
    events: tuple[IrradiationEvent, ...] = ()


@dataclass(frozen=True)
class _Ready:
    """An object built and encoded, not yet queued."""

    new: NewObject
    frame: Frame                  #: its last frame
    event_uid: str | None
    event: IrradiationEvent | None


@dataclass(frozen=True)
class _Labels:
    """What every object of one acquisition says about it beyond the frames."""

    anatomy: Anatomy
    protocol_name: str


def device_info(modality: ModalitySection, software_versions: str) -> DeviceInfo:
    return DeviceInfo(
        modality=modality.modality,
        manufacturer=modality.manufacturer,
        model_name=modality.model_name,
        device_serial_number=modality.device_serial_number,
        station_name=modality.station_name,
        institution_name=modality.institution_name,
        software_versions=software_versions,
    )


class Acquisition:
    """Owns the device; one acquisition at a time."""

    def __init__(
        self,
        *,
        driver_name: str,
        driver_options: dict[str, object],
        device: DeviceInfo,
        queue: QueueStore,
        uids: UIDSource,
        on_queued: Callable[[], None] = lambda: None,
        buffer_frames: int = CAPTURE_BUFFER_FRAMES,
        image: ImageSettings = ImageSettings(),
    ) -> None:
        self._image = image
        self._buffer_frames = buffer_frames
        self.dropped_total = 0
        #: the newest frame stored, for the console's thumbnail
        self.last_frame: Frame | None = None
        self._driver: Driver = create_driver(driver_name, dict(driver_options))
        self._conversion_type = CONVERSION_TYPE_BY_DRIVER.get(
            driver_name, ConversionType.DIGITAL_INTERFACE)
        self._device = device
        self._queue = queue
        self._uids = uids
        self._on_queued = on_queued
        self._lock = threading.Lock()
        #: events of the objects stored by the running acquisition, by UID (under _lock)
        self._events: dict[str, IrradiationEvent] = {}
        self.last_error = ""
        #: progress of a running acquisition, for the systemd watchdog; idle between them
        self.heartbeat = Heartbeat("acquisition", limit_s=2 * FRAME_TIMEOUT_S + 30)
        self.heartbeat.idle()

    def open(self) -> None:
        """Open the device; a failure is kept for `status` and retried at the next acquire."""
        try:
            self._driver.open()
            self.last_error = ""
        except DriverError as err:
            self.last_error = str(err)
            logger.error("device %s cannot be opened: %s", self._driver.name, err)

    def close(self) -> None:
        self._driver.close()

    def status(self) -> DriverStatus:
        return self._driver.status()

    @property
    def emits_radiation(self) -> bool:
        """Whether acquiring fires the device's X-ray generator."""
        return type(self._driver).emits_radiation

    @property
    def writes_laterality(self) -> bool:
        return self._image.writes_laterality

    def anatomy_for(self, order: Order, choice: AnatomyChoice | None = None) -> Anatomy:
        """The region and side this acquisition's objects will carry, decided before any
        exposure: the technologist's choice, else what the order names, else the region of
        `[modality] anatomic_region`. For an IOD with Image Laterality (DX) the side must then
        be known, or the region be unpaired ("U").

        Raises
        ------
        IODError
            An unknown body part or side; a choice that contradicts the order (a wrong side is
            a patient-safety error: the order is corrected, not overridden); a side for an IOD
            without Image Laterality; a DX whose side is unknown (naming what to give).
        """
        return regions.decide(order, choice or AnatomyChoice(),
                              default_region=self._image.anatomic_region,
                              writes_laterality=self._image.writes_laterality,
                              iod=self._image.iod)

    def acquire(self, order: Order, frames: int, *, anatomy: Anatomy | None = None,
                protocol_name: str = "") -> AcquisitionResult:
        """Capture `frames` frames for `order`, one object each, in one new series.

        `anatomy` is what `anatomy_for` decided (None: decided here, from the order and the
        config); `protocol_name` goes into every object's General Series, the value the
        procedure's MPPS sends for the series ("" writes none).

        Raises
        ------
        AcquisitionError
            If the device cannot be opened or no frame could be captured at all. When some
            frames were captured, they are returned with `error` set: nothing already
            captured is lost.
        """
        if frames < 1:
            raise AcquisitionError(f"frames: expected at least 1, got {frames}")
        try:
            # decided before the device is touched: a refusal here costs no exposure
            chosen = anatomy if anatomy is not None else self.anatomy_for(order)
        except IODError as err:
            raise AcquisitionError(str(err)) from err
        with self._lock:
            if not self._driver.is_open:
                self.open()
                if not self._driver.is_open:
                    raise AcquisitionError(f"device not available: {self.last_error}")
            try:
                # refuse the exam up front rather than stop it half way (the first object's
                # size is not known yet: one frame of 16-bit pixels is the estimate)
                self._queue.check_room(frames * self._estimated_object_bytes())
            except SpoolFullError as err:
                raise AcquisitionError(str(err)) from err
            series = new_series_context(
                self._uids, order, started_at=datetime.now().astimezone().replace(tzinfo=None),
                series_number=1, study_id=order.requested_procedure_id[:16],
            )
            self.heartbeat.beat()
            try:
                captured, dropped, error = self._run_capture(
                    order, series, frames, _Labels(chosen, protocol_name))
            finally:
                self.heartbeat.idle()
            self.dropped_total += dropped
            if dropped:
                error = error or (f"{dropped} of {frames} frames dropped: the spool could not "
                                  f"keep up with the device")
            if not captured:
                raise AcquisitionError(error)
            logger.info("acquired %d object(s) in series %s, %d frame(s) dropped",
                        len(captured), series.series_instance_uid, dropped)
            return AcquisitionResult(series.study_instance_uid, series.series_instance_uid,
                                     tuple(captured), error, dropped,
                                     events=tuple(self._take_events(captured)))

    def _take_events(self, captured: list[CapturedObject]) -> list[IrradiationEvent]:
        """The events of these objects, in their order (and forget them)."""
        return [event for obj in captured if obj.irradiation_event_uid is not None
                and (event := self._events.pop(obj.irradiation_event_uid, None)) is not None]

    def _run_capture(self, order: Order, series: SeriesContext, frames: int,
                     labels: _Labels) -> tuple[list[CapturedObject], int, str]:
        """The device is read on its own thread into a bounded buffer, so a slow disk never
        stalls it; a frame that finds the buffer full is dropped and counted."""
        buffer: queue.Queue[Frame | DriverError | None] = queue.Queue(self._buffer_frames)
        stop = threading.Event()
        dropped = 0

        def read() -> None:
            nonlocal dropped
            try:
                for _ in range(frames):
                    if stop.is_set():
                        return
                    stall_point("acquisition")
                    frame = self._driver.read_frame(timeout=FRAME_TIMEOUT_S)
                    self.heartbeat.beat()
                    try:
                        buffer.put_nowait(frame)
                    except queue.Full:
                        dropped += 1
                        logger.warning("frame %d dropped: capture buffer full",
                                       frame.sequence_number)
            except DriverError as err:
                buffer.put(err)
            finally:
                buffer.put(None)

        reader = threading.Thread(target=read, name="capture", daemon=True)
        reader.start()
        captured: list[CapturedObject] = []
        held: list[Frame] = []        # a multi-frame object is made of the whole run
        error = ""
        later: list[Frame | DriverError | None] = []   # taken with a group, not a frame

        def take() -> Frame | DriverError | None:
            return later.pop(0) if later else buffer.get()

        try:
            while (item := take()) is not None:
                if isinstance(item, DriverError):
                    error = f"after {len(captured) + len(held)} of {frames} frames: {item}"
                    continue
                if error:
                    continue          # the spool failed: drain, nothing more can be kept
                if self._image.multiframe:
                    held.append(item)
                    continue
                group = [item]
                # frames that waited while the last ones were spooled go in one group
                while len(group) < SPOOL_GROUP_MAX and not later:
                    try:
                        waiting = buffer.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(waiting, Frame):
                        group.append(waiting)
                    else:
                        later.append(waiting)
                try:
                    self._store_group(group, order, series, labels, into=captured)
                except AgentError as err:
                    error = f"frame {len(captured) + 1} of {frames}: {err}"
                    stop.set()
        finally:
            stop.set()
            reader.join()
        if held:
            try:
                # the frames a device fault cut short are kept, as a shorter object
                captured.append(self._store_frames(held, order, series, 1, labels))
            except AgentError as err:
                error = f"{len(held)} frames: {err}" + (f"; {error}" if error else "")
        if error:
            logger.error("acquisition stopped: %s", error)
        return captured, dropped, error

    def _estimated_object_bytes(self) -> int:
        options = self._driver.options
        width = int(options.get("width", 0) or 0)
        height = int(options.get("height", 0) or 0)
        samples = 3 if options.get("color") else 2
        return width * height * samples + 16 * 1024

    def _store_frames(self, frames: list[Frame], order: Order, series: SeriesContext,
                      instance_number: int, labels: _Labels) -> CapturedObject:
        """One object of `frames` (a multi-frame object: all of them), queued."""
        ready = self._prepare(frames, order, series, instance_number, labels)
        return self._captured(ready, self._enqueue(ready.new))

    def _store_group(self, frames: list[Frame], order: Order, series: SeriesContext,
                     labels: _Labels, *, into: list[CapturedObject]) -> None:
        """Each frame its own object, appended to `into` once queued; the group in one queue
        transaction (n + 2 flushes to disk instead of 3n). A frame that cannot be made into
        an object ends the group: the ones before it are still queued, then its error is
        raised; if the group cannot be queued together, its objects go one at a time, so
        that those that fit are kept."""
        ready: list[_Ready] = []
        failure: AgentError | None = None
        for frame in frames:
            try:
                ready.append(self._prepare([frame], order, series, len(into) + len(ready) + 1,
                                           labels))
            except AgentError as err:
                failure = err
                break
        if len(ready) > 1:
            try:
                queued = self._queue.enqueue_many([item.new for item in ready])
            except QueueError as err:
                logger.warning("%d frames could not be queued together (%s): one at a time",
                               len(ready), err)
            else:
                into.extend(self._captured(item, done)
                            for item, done in zip(ready, queued, strict=True))
                ready = []
        for item in ready:
            into.append(self._captured(item, self._enqueue(item.new)))
        if failure is not None:
            raise failure

    def _enqueue(self, new: NewObject) -> QueuedObject:
        return self._queue.enqueue(new.payload, sop_instance_uid=new.sop_instance_uid,
                                   sop_class_uid=new.sop_class_uid,
                                   transfer_syntax_uid=new.transfer_syntax_uid)

    def _prepare(self, frames: list[Frame], order: Order, series: SeriesContext,
                 instance_number: int, labels: _Labels) -> _Ready:
        """Build, check and encode the object of `frames`: everything but queueing it."""
        sop_instance_uid = self._uids.new_uid()
        event_uid, event = self._irradiation_event(frames[0])
        ds = build_image(
            self._image.iod, frames, order=order, device=self._device, series=series,
            instance_number=instance_number, sop_instance_uid=sop_instance_uid,
            conversion_type=self._conversion_type,
            patient_orientation=self._image.patient_orientation,
            anatomic_region=labels.anatomy.region,
            image_laterality=labels.anatomy.laterality,
            irradiation_event_uid=event_uid,
            protocol_name=labels.protocol_name,
        )
        validate_image(ds)
        # the spooled bytes are what goes on the wire, in this syntax, on every resend
        payload = encode_part10(ds, self._image.transfer_syntax)
        if not payload:
            raise IODError("Part 10 encoding produced no bytes")
        new = NewObject(payload, sop_instance_uid, str(ds.SOPClassUID),
                        KNOWN_TRANSFER_SYNTAXES[self._image.transfer_syntax])
        return _Ready(new, frames[-1], event_uid, event)

    def _captured(self, ready: _Ready, queued: QueuedObject) -> CapturedObject:
        """What is done once an object is queued: the forwarder woken, the log, the dose
        event kept for the SR."""
        frame = ready.frame
        self._on_queued()
        logger.info("queue item %d: captured frame %d as %s", queued.queue_id,
                    frame.sequence_number, queued.sop_instance_uid)
        self.last_frame = frame
        if ready.event is not None:
            self._events[ready.event.uid] = ready.event
        return CapturedObject(queued.queue_id, queued.sop_instance_uid, frame.sequence_number,
                              ready.new.sop_class_uid, ready.event_uid)

    def _irradiation_event(self, frame: Frame) -> tuple[str | None, IrradiationEvent | None]:
        """The exposure that made this frame: a new Irradiation Event UID for a device that
        emits radiation (None otherwise), and its record for the dose SR.

        A frame whose technique values are missing still gets its UID (it was an exposure) but
        no record: a dose report never makes a value up, and the image is kept."""
        if not self.emits_radiation:
            return None, None
        uid = self._uids.new_uid()
        started_at = datetime.fromtimestamp(frame.t_wall).astimezone()
        try:
            return uid, IrradiationEvent.from_device_parameters(uid, started_at,
                                                                frame.device_parameters)
        except IODError as err:
            logger.error("frame %d: no dose record: %s", frame.sequence_number, err)
            return uid, None
