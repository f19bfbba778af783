"""C-ECHO to a peer, for `modality-agent echo` and for the service engineer."""

from __future__ import annotations

import time

from pynetdicom.sop_class import Verification

from agent.net.ae import AgentAE, associate


def echo(ae_title: str, host: str, port: int, called_ae: str) -> tuple[bool, str, float]:
    """Returns (ok, detail, seconds). Never raises for a network failure: it is the answer."""
    ae = AgentAE(ae_title)
    ae.add_requested_context(Verification)
    started = time.monotonic()
    assoc, failure = associate(ae, host, port, called_ae)
    if not assoc.is_established:
        return False, failure, time.monotonic() - started
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed = time.monotonic() - started
    if status is not None and "Status" in status and int(status.Status) == 0:
        return True, "0x0000", elapsed
    code = f"0x{int(status.Status):04X}" if status is not None and "Status" in status else "none"
    return False, f"status {code}", elapsed
