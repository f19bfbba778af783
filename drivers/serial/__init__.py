"""The `serial` driver: an X-ray generator and detector on a serial line (drivers/PROTOCOL.md).

`codec` frames bytes into messages (pure), `assembly` rebuilds frames from chunks (pure),
`driver` does the I/O over pyserial.
"""
