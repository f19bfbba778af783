"""DICOM networking on top of pynetdicom: sockets with TCP_NODELAY, status mapping, Storage
Commitment messages. No queue, no pixels."""
