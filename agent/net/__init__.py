"""DICOM networking on top of pynetdicom, and the agent's one network boundary: `ae` opens and
accepts every association (TCP_NODELAY, timeouts, PDU limits, DICOM TLS, failures raised by
type), `status` maps every DIMSE status, `messages` is the sending process's protocol, `tls`
builds the SSL contexts, `commitment` the Storage Commitment messages. No queue, no pixels.

Importing this package fixes pynetdicom's lost DIMSE response (`pynetdicom_fixes`,
docs/pynetdicom-lost-response.md) in this process, before any association exists: the daemon
and every sending process import it."""

from agent.net import pynetdicom_fixes

pynetdicom_fixes.apply()
