"""The direct C-STORE path's per-object helpers (agent.net.direct_store): the socket write,
the batch buffer kept between objects and the presentation context remembered per
association. Byte-for-byte equality with pynetdicom and the archives is in
tests/integration/test_direct_store.py."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from agent.net import direct_store


def _read_all(sock: socket.socket, into: bytearray, chunk: int) -> None:
    while True:
        data = sock.recv(chunk)
        if not data:
            return
        into += data


class _CountingSocket(socket.socket):
    """A socket that counts its sendmsg calls (to show the partial path was taken)."""

    calls = 0

    def sendmsg(self, *args: Any) -> int:  # type: ignore[override]
        type(self).calls += 1
        return super().sendmsg(*args)


def test_send_all_writes_every_byte_in_order_when_the_socket_takes_only_part() -> None:
    # a small send buffer and a reader taking 4 KB at a time: sendmsg returns partial
    # counts, inside a header and inside a data slice, and the rest must follow in order
    plain_writer, reader = socket.socketpair()
    writer = _CountingSocket(fileno=plain_writer.detach())
    received = bytearray()
    try:
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        payload = bytearray(range(256)) * (3 * 4096)          # 3 MB, no repeat at 16 KB
        view = memoryview(payload)
        buffers: list[Any] = []
        for start in range(0, len(payload), 16378):
            piece = view[start:start + 16378]
            buffers.append(direct_store.pdu_header(1, direct_store.DATA_MORE, len(piece)))
            buffers.append(piece)
        expected = b"".join(bytes(b) for b in buffers)
        thread = threading.Thread(target=_read_all, args=(reader, received, 4096))
        thread.start()
        direct_store._send_all(writer, buffers, 10.0)
        writer.shutdown(socket.SHUT_WR)
        thread.join(10)
        assert not thread.is_alive()
        assert bytes(received) == expected
        assert _CountingSocket.calls > 10          # the socket took it in many parts
    finally:
        writer.close()
        reader.close()


def test_unsent_drops_whole_buffers_then_cuts_into_the_next() -> None:
    pending = [memoryview(b"abc"), memoryview(b"defg"), memoryview(b"h")]
    rest = direct_store._unsent(pending, 5)
    assert [bytes(b) for b in rest] == [b"fg", b"h"]
    assert direct_store._unsent(rest, 3) == []


def test_the_batch_buffer_is_kept_between_objects_and_grows_when_needed() -> None:
    first = direct_store._batch_buffer(1000)
    backing = first.obj
    first.release()
    second = direct_store._batch_buffer(600)
    assert second.obj is backing and len(second) == 600
    second.release()
    larger = direct_store._batch_buffer(5000)
    assert len(larger) == 5000 and len(larger.obj) >= 5000
    larger.release()


class _Assoc:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def _get_valid_context(self, sop_class: str, syntax: str, role: str, *,
                           allow_conversion: bool) -> Any:
        assert role == "scu" and allow_conversion is False
        self.asked.append((sop_class, str(syntax)))
        if sop_class == "1.2.3.404":
            raise ValueError("no accepted presentation context")
        return SimpleNamespace(context_id=len(self.asked) * 2 + 1)


def test_the_context_is_asked_of_pynetdicom_once_per_class_and_syntax() -> None:
    assoc = _Assoc()
    assert direct_store._context_id(assoc, "1.2.3", "1.2.840.10008.1.2.1") == 3
    assert direct_store._context_id(assoc, "1.2.3", "1.2.840.10008.1.2.1") == 3
    assert direct_store._context_id(assoc, "1.2.3", "1.2.840.10008.1.2") == 5
    assert assoc.asked == [("1.2.3", "1.2.840.10008.1.2.1"), ("1.2.3", "1.2.840.10008.1.2")]
    # a refusal is not remembered: the caller converts the file, and asks again next time
    for _ in range(2):
        with pytest.raises(ValueError):
            direct_store._context_id(assoc, "1.2.3.404", "1.2.840.10008.1.2.1")
    assert len(assoc.asked) == 4
