"""C-ECHO to a peer, for `modality-agent echo` and for the service engineer."""

from __future__ import annotations

import time

from pynetdicom.sop_class import Verification

from agent.errors import AssociationError
from agent.net import status as dimse_status
from agent.net.ae import AgentAE, associate
from agent.net.tls import PeerTls


def echo(ae_title: str, host: str, port: int, called_ae: str, *,
         tls: PeerTls | None = None) -> tuple[bool, str, float]:
    """Returns (ok, detail, seconds). Never raises for a network failure: it is the answer.
    With `tls`, the echo goes over DICOM TLS and a failed handshake is the detail."""
    ae = AgentAE(ae_title)
    ae.add_requested_context(Verification)
    started = time.monotonic()
    try:
        assoc = associate(ae, host, port, called_ae, tls=tls)
    except AssociationError as err:
        return False, str(err), time.monotonic() - started
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed = time.monotonic() - started
    code = dimse_status.status_code(status)
    if code == dimse_status.SUCCESS:
        return True, "0x0000", elapsed
    return False, f"status {'none' if code is None else f'0x{code:04X}'}", elapsed
