"""Faults the serial firmware stub can be told to make (behaviour as data, like pyvisa-sim).

A fault is armed, then fires on the `at`-th outgoing packet of kind `on` counted from when it
was armed (for `interlock`: the `at`-th ARM command), and keeps firing on the next `times - 1`
matching ones. Textual form, for `SerialFirmware(faults=[...])` and the command line::

    name[@at][:key=value[,key=value...]]     e.g. "bad_crc@3", "drop_packet:on=chunk,times=2",
                                             "stall:seconds=1.5", "garbage@2:nbytes=300"

`stall`, `disconnect` and `restart` with `at=0` happen at once, whatever is being sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: fault name -> what it does
FAULT_KINDS: dict[str, str] = {
    "garbage": "random bytes (with a false sync) on the line before the packet",
    "bad_crc": "one bit of the packet flipped after its CRC was computed",
    "drop_packet": "the packet is not sent (its sequence number is used up)",
    "duplicate_packet": "the packet is sent twice, same sequence number",
    "truncate": "only the first half of the packet is sent",
    "huge_length": "a valid-looking header announcing 65535 bytes goes before the packet",
    "corrupt_pixels": "one pixel byte of a chunk flipped before its CRC-16 (only CRC-32 sees it)",
    "stall": "the device hangs: sends nothing and ignores commands for `seconds` (or until "
             "clear_faults())",
    "disconnect": "the device drops off the line: the pty closes and comes back on a new one "
                  "after `seconds` (or at replug())",
    "interlock": "ARM is refused with NAK INTERLOCK (door open)",
    "restart": "the device reboots on the line (watchdog): technique, held frame, reply cache "
               "and sequence numbers start again",
}

#: packet kinds a fault can be aimed at
PACKET_KINDS = ("any", "ack", "nak", "header", "chunk", "end")

_DEFAULT_ON = {"corrupt_pixels": "chunk"}
#: faults that can happen at once (at=0) rather than on a packet
AT_ONCE = ("stall", "disconnect", "restart")


@dataclass
class Fault:
    """One armed fault; `countdown` matching packets left until it fires."""

    kind: str
    at: int = 1
    on: str = "any"
    times: int = 1
    seconds: float | None = None
    nbytes: int = 64
    countdown: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in FAULT_KINDS:
            problems.append(f"unknown fault {self.kind!r} (known: {', '.join(FAULT_KINDS)})")
        if self.on not in PACKET_KINDS:
            problems.append(f"on: expected one of {', '.join(PACKET_KINDS)}, got {self.on!r}")
        if self.at < 0 or (self.at == 0 and self.kind not in AT_ONCE):
            problems.append(f"at: expected >= 1 (0 only for {', '.join(AT_ONCE)}), "
                            f"got {self.at}")
        if self.times < 1:
            problems.append(f"times: expected >= 1, got {self.times}")
        if self.seconds is not None and self.seconds < 0:
            problems.append(f"seconds: expected >= 0, got {self.seconds}")
        if not 1 <= self.nbytes <= 65536:
            problems.append(f"nbytes: expected 1..65536, got {self.nbytes}")
        if problems:
            raise ValueError("; ".join(problems))
        self.countdown = self.at

    def matches(self, packet_kind: str) -> bool:
        return self.on in ("any", packet_kind)


def make_fault(kind: str, at: int = 1, *, on: str | None = None, times: int = 1,
               seconds: float | None = None, nbytes: int = 64) -> Fault:
    """A fault with its default target (`corrupt_pixels` aims at chunks, others at any packet).

    Raises
    ------
    ValueError
        Naming each bad argument.
    """
    return Fault(kind, at, on or _DEFAULT_ON.get(kind, "any"), times, seconds, nbytes)


def parse_fault(spec: str) -> Fault:
    """Parse ``name[@at][:key=value,...]``.

    Raises
    ------
    ValueError
        If the text or a value is malformed, naming the spec.
    """
    head, _, options = spec.strip().partition(":")
    name, _, at_text = head.partition("@")
    kwargs: dict[str, object] = {}
    try:
        if at_text:
            kwargs["at"] = int(at_text)
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected key=value, got {item!r}")
            if key in ("at", "times", "nbytes"):
                kwargs[key] = int(value)
            elif key == "seconds":
                kwargs[key] = None if value in ("", "none") else float(value)
            elif key == "on":
                kwargs[key] = value
            else:
                raise ValueError(f"unknown key {key!r} (known: at, on, times, seconds, nbytes)")
        return make_fault(name.strip(), **kwargs)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"fault {spec!r}: {err}") from err
