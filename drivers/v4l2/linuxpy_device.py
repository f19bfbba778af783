"""`CaptureDevice` on a real /dev/videoN through linuxpy (the optional extra [v4l2]).

Imported only when a v4l2 driver opens its device. Memory-mapped streaming on the single-planar
VIDEO_CAPTURE buffer type. Note: linuxpy is GPL-3.0-or-later.
"""

from __future__ import annotations

import mmap
import select

from linuxpy.video import device as v4l2  # type: ignore[import-not-found,unused-ignore]

from drivers.v4l2.capture import Filled, Format

_CAPTURE = v4l2.BufferType.VIDEO_CAPTURE
_MMAP = v4l2.Memory.MMAP


class LinuxpyCaptureDevice:
    """One open V4L2 capture device. Errors are the OSErrors of its ioctls."""

    def __init__(self, path: str) -> None:
        self._device = v4l2.Device(path, blocking=False)
        self._device.open()
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []

    def set_format(self, width: int, height: int, fourcc: str) -> Format:
        v4l2.set_format(self._device, _CAPTURE, width, height, pixel_format=fourcc)
        # the driver may adjust any of it: read back what it will deliver
        pix = v4l2.get_raw_format(self._device, _CAPTURE).fmt.pix
        return Format(int(pix.width), int(pix.height),
                      v4l2.human_pixel_format(int(pix.pixelformat)),
                      int(pix.bytesperline), int(pix.sizeimage))

    def request_buffers(self, count: int) -> list[memoryview]:
        granted = v4l2.request_buffers(self._device, _CAPTURE, _MMAP, count).count
        for index in range(granted):
            buffer = v4l2.query_buffer(self._device, _CAPTURE, _MMAP, index)
            self._maps.append(v4l2.mmap_from_buffer(self._device, buffer))
        self._views = [memoryview(m) for m in self._maps]
        return self._views

    def queue_buffer(self, index: int) -> None:
        v4l2.enqueue_buffer(self._device, _CAPTURE, _MMAP, 0, index)

    def dequeue_buffer(self, timeout_s: float) -> Filled | None:
        ready, _, _ = select.select([self._device.fileno()], [], [], max(timeout_s, 0.0))
        if not ready:
            return None
        try:
            buffer = v4l2.dequeue_buffer(self._device, _CAPTURE, _MMAP)
        except BlockingIOError:
            return None
        return Filled(int(buffer.index), int(buffer.bytesused), int(buffer.sequence),
                      bool(buffer.flags & v4l2.BufferFlag.ERROR))

    def stream_on(self) -> None:
        self._device.stream_on(_CAPTURE)

    def stream_off(self) -> None:
        self._device.stream_off(_CAPTURE)

    def close(self) -> None:
        """Unmap the buffers, free them, close the device. Raises OSError from the device."""
        for view in self._views:
            view.release()
        self._views = []
        for mapping in self._maps:
            mapping.close()
        self._maps = []
        try:
            if not self._device.closed:
                v4l2.free_buffers(self._device, _CAPTURE, _MMAP)
        finally:
            self._device.close()
