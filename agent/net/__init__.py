"""DICOM networking on top of pynetdicom, and the agent's one network boundary: `ae` opens and
accepts every association (TCP_NODELAY, timeouts, PDU limits, DICOM TLS, failures raised by
type), `status` maps every DIMSE status, `messages` is the sending process's protocol, `tls`
builds the SSL contexts, `commitment` the Storage Commitment messages. No queue, no pixels."""
