# ruff: noqa: E501
"""docs/configuration.md, generated from the config's own definitions so it cannot drift: each
key's type, meaning and any wording of its default or range from `agent.config.REFERENCE`, the
default from the section dataclass, the range from the check `load_config` applies to it
(`agent.config.checks_by_key`); the prose between the tables lives here, per section.

`python -m agent.config_doc > docs/configuration.md` rewrites the file; the unit test
tests/unit/test_config_doc.py fails when the file differs (CONFIG_DOC_UPDATE=1 rewrites it).
Lines of prose are kept as the doc writes them (hence no line-length rule in this file).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent import config
from agent.config import REFERENCE, KeyDoc, checks_by_key, format_default

TABLE_HEAD = "| Key | Type | Default | Range | Meaning |\n|---|---|---|---|---|\n"


@dataclass(frozen=True)
class SectionText:
    """One `## ` section: its heading, the prose above its table and below it."""

    cls: type
    heading: str
    intro: str
    outro: str

PREAMBLE = """# Configuration

The agent reads one TOML file. Section and key names are a public interface: new keys may be
added, but none are renamed. `config/agent.example.toml` sets every key, with comments;
`config/simulated.toml` is the smallest working file (simulated device, one local Orthanc).

## Where the file is

1. The path given on the command line.
2. Otherwise `$MODALITY_AGENT_CONFIG`, if it is set and not empty.
3. Otherwise `/etc/modality-agent/agent.toml`.

Relative paths *inside* the file (`spool_dir`, `[api] token_file` and `import_folders`,
`[watch_folder] path`, the three `[tls]` files) are resolved against the folder that holds the
file, not the working directory, so the same file behaves the same from a shell and from systemd.
`~` is not expanded. Loading the config does not create or check any directory; `check-config` and the start of the
agent then check where the spool is (see [The spool's location](#the-spools-location)).

## Errors

The whole file is checked at start, and every problem is reported together, one line each:

```text
agent.toml: [listener] port: expected an integer 1..65535, got "104a"
agent.toml: [[destinations]] #2 name: expected a name no other destination uses, got "pacs" (also #1)
agent.toml: [worklist] called_ae: expected an AE title: ..., got nothing (the key is required)
agent.toml: [listner]: expected one of the sections ([agent], [listener], ...), got an unknown section
```

- Lines start with the file's name. Destinations are numbered from 1 in the order they appear in
  the file: `[[destinations]] #1`.
- Values are shown as they are written in TOML, so `"104"` (a string) and `104` (an integer) look
  different. Long strings are cut after 40 characters.
- Unknown sections and keys are errors (usually typos); the message lists the known ones.
- If the file cannot be read, is not UTF-8 or is not valid TOML, there is a single line with the
  file's full path and, for syntax errors, the line and column.

## Types

| Type | Accepted |
|---|---|
| integer | a TOML integer within the key's range. `true`/`false` are not integers, and neither is `104.0`. |
| number | a TOML integer or float within the key's range (`nan` and `inf` are refused). Stored as a float. |
| path | non-empty string, absolute or relative to the config file's folder; `~` is refused (not expanded). |

| boolean | `true` or `false`; `1`, `0` and `"yes"` are refused. |
| AE title | string; leading and trailing spaces are removed (they are not significant in DICOM), then 1..16 printable ASCII characters, no backslash. All spaces is refused. |
| host | non-empty string with no whitespace: a host name or an IP address. |
| port | integer 1..65535. |
| DICOM text (LO, SH) | string, leading and trailing spaces removed, no backslash (it separates DICOM values) or control characters. LO: at most 64 characters, SH: at most 16. May be empty. |

Every integer and number has a range, both ends included, shown in the tables below and in the
error message (`[queue] retry_initial_s: expected a number 0.1..3600, got 1e-06`). The ranges are
generous for any site but keep out values that make the agent misbehave: a retry every
microsecond keeps a CPU core busy, a timeout of `1e300` seconds overflows when it is added to the
clock, and a negative one fires at once. Times are in seconds (`_s`), sizes in MiB (`_mb`).

"""

SECTIONS: tuple[SectionText, ...] = (
    SectionText(
        config.AgentSection,
        '## `[agent]`',
        intro="""
Optional; every key has a default.

""",
        outro="""
""",
    ),
    SectionText(
        config.ListenerSection,
        '## `[listener]`',
        intro="""
Inbound associations: Storage Commitment N-EVENT-REPORTs and C-ECHO. Optional.

""",
        outro="""
""",
    ),
    SectionText(
        config.ApiSection,
        '## `[api]`',
        intro="""
The local HTTP API and technologist web console. Optional.

""",
        outro="""
""",
    ),
    SectionText(
        config.DeviceSection,
        '## `[device]` and `[device.options]`',
        intro="""
Optional.

""",
        outro="""
Options of the `simulated` driver:

| Key | Type | Default | Range | Meaning |
|---|---|---|---|---|
| `width` | integer | `512` | 1..16384 | Columns. |
| `height` | integer | `512` | 1..16384 | Rows. |
| `bits_stored` | integer | `12` | 1..16; 8 when `color` | Bits per sample. |
| `color` | boolean | `false` | | RGB 8-bit frames instead of MONOCHROME2. |
| `frame_rate` | number | `0.0` | 0..1000 | Frames per second; 0 = as fast as asked. |
| `kvp` | number | `70.0` | | Reported with each frame. |
| `exposure_ms` | number | `20.0` | | Reported with each frame. |

""",
    ),
    SectionText(
        config.ModalitySection,
        '## `[modality]`',
        intro="""
How the device describes itself in every object. Optional.

""",
        outro="""
""",
    ),
    SectionText(
        config.WorklistSection,
        '## `[worklist]`',
        intro="""
Modality Worklist (C-FIND) provider. Omit the section to work unscheduled only. If the section is
present, `host`, `port` and `called_ae` are required. The broad query asks for today's date
(`days_before`, `days_after`) and, unless turned off, this station's `ae_title` and
`[modality] modality`.

""",
        outro="""
When the RIS answers a broad query with nothing, status says which filters were applied, e.g.
"no worklist items for station MODALITY1 and modality DX today (filters [worklist]
filter_station_ae, filter_modality)".

""",
    ),
    SectionText(
        config.DestinationSection,
        '## `[[destinations]]`',
        intro="""
One or more archives that receive every object: write one `[[destinations]]` block per archive
(an array of tables; `[destinations.pacs]` is refused). At least one is required, so an empty file
is not a valid config.

""",
        outro="""
The certificate settings are shared by every path, in [`[tls]`](#tls).

""",
    ),
    SectionText(
        config.MppsSection,
        '## `[mpps]`',
        intro="""
Modality Performed Procedure Step (N-CREATE/N-SET) provider. Omit the section to disable MPPS. If
it is present, all three keys are required.

""",
        outro="""
""",
    ),
    SectionText(
        config.TlsSection,
        '## `[tls]`',
        intro="""
This station's identity for DICOM TLS (PS3.15 Annex B), used by every section with `tls = true`:
our certificate is presented to every peer (mutual authentication, IHE ATNA node
authentication) and each peer's certificate is verified against `ca_file`. Omit the section if no
path uses TLS; a section with `tls = true` and no `[tls]` is a config error naming both. All
three files are PEM and are read when the agent starts: a new certificate and key are picked up
by a restart (queued objects stay queued). Setting it up with a hospital CA or Orthanc:
[tls.md](tls.md).

""",
        outro="""
| Profile | TLS versions | TLS 1.2 cipher suites |
|---|---|---|
| `bcp195-nd` | 1.2, 1.3 | `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, `TLS_DHE_RSA_WITH_AES_256_GCM_SHA384`, `TLS_DHE_RSA_WITH_AES_128_GCM_SHA256` |
| `bcp195` | 1.2, 1.3 | those four and `TLS_RSA_WITH_AES_128_CBC_SHA` (for peers of the retired AES profile) |
| `bcp195-extended` | 1.2 only | those four and `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384`, `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` |

TLS 1.3 has its own suites (all AES-GCM or ChaCha20-Poly1305). With an EC (ECDSA) certificate,
`bcp195-nd` and `bcp195` need a peer that speaks TLS 1.3, since their TLS 1.2 suites are RSA ones;
for a TLS 1.2-only peer use an RSA certificate or `bcp195-extended`.

`modality-agent check-config` checks the identity and lists every problem, e.g.:

```text
agent.toml: [tls] private_key: expected a file only its owner may read (chmod 600), got "/etc/modality-agent/tls/agent.key" with mode 0644
agent.toml: [tls] private_key: expected the key of [tls] certificate "/etc/modality-agent/tls/agent.crt", got "/etc/modality-agent/tls/old.key", which does not match it
agent.toml: [tls] certificate: expected a certificate valid now, got "/etc/modality-agent/tls/agent.crt", which expired on 2026-03-01 12:00 UTC
agent.toml: [tls] ca_file: expected a readable PEM file, got "/etc/modality-agent/tls/hospital-ca.pem" (no such file)
```

It also refuses an encrypted key, a certificate file without a certificate, a certificate not yet
valid and a `ca_file` without a CA certificate.

""",
    ),
    SectionText(
        config.AuditSection,
        '## `[audit]` (optional)',
        intro="""
Where DICOM audit messages (PS3.15 A.5, IHE ATNA Record Audit Event) go: the hospital's audit
record repository, over syslog. Omit the section to disable the audit trail. Every audited event
is written to `<spool_dir>/audit/` before it is reported done and sent from there in order;
[audit.md](audit.md) lists the messages and when they are sent.

""",
        outro="""
""",
    ),
    SectionText(
        config.QueueSection,
        '## `[queue]`',
        intro="""
Retries and retention of the store-and-forward queue. Optional.

""",
        outro="""
""",
    ),
    SectionText(
        config.WatchFolderSection,
        '## `[watch_folder]` (optional)',
        intro="""
Omit the section for no watch folder. See [watchfolder.md](watchfolder.md).

""",
        outro="""
The watch folder must be outside the spool and must not contain it (see below); it may be, or be
inside, one of `[api] import_folders`.

""",
    ),
)

POSTAMBLE = """## The spool's location

`check-config`, and the agent at start, refuse a spool folder that would make it touch files it
does not own (the queue sets permissions, cleans `tmp/` and deletes delivered objects there):

- `spool_dir` may not be `/` or a system folder itself: `/etc`, `/usr`, `/bin`, `/sbin`, `/lib`
  (and `/lib32`, `/lib64`, ...), `/boot`, `/dev`, `/proc`, `/sys`, `/run`, `/var`, `/home`,
  `/root`, `/tmp`, `/opt`, `/srv`, `/mnt`, `/media`. A folder inside them (such as
  `/var/lib/modality-agent/spool`) is fine.
- An existing, non-empty `spool_dir` must already be a spool: it holds the marker file
  `.modality-agent-spool` that the agent writes when it makes a spool, or, for spools made by
  older versions, `queue.db`. Point a new installation at a new or empty folder.
- `[watch_folder] path` and each `[api] import_folders` entry may not be the spool, be inside it,
  or contain it. Symbolic links are followed before comparing, so a link cannot hide an overlap.

The problems are reported like any other, e.g.
`agent.toml: [agent] spool_dir: expected an empty folder or a modality-agent spool (with .modality-agent-spool or queue.db), got "/srv/data" (holds 12 entries, no spool marker)`.
"""


def _default(cls: type, doc: KeyDoc) -> str:
    if doc.default is not None:
        return doc.default
    field = {f.name: f for f in dataclasses.fields(cls)}[doc.keys[0]]
    if field.default is not dataclasses.MISSING:
        return format_default(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return format_default(field.default_factory())
    return "required"


def _range(cls: type, doc: KeyDoc, checks: Mapping[tuple[type, str], Any]) -> str:
    if doc.range is not None:
        return doc.range
    check = checks.get((cls, doc.keys[0]))
    return getattr(check, "range_text", "") + doc.range_note


def section_table(cls: type) -> str:
    """The `| Key | Type | Default | Range | Meaning |` table of one section."""
    checks = checks_by_key()
    rows = []
    for doc in REFERENCE[cls]:
        keys = ", ".join(f"`{key}`" for key in doc.keys)
        cells = [keys, doc.type, _default(cls, doc), _range(cls, doc, checks), doc.meaning]
        rows.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|\n")
    return TABLE_HEAD + "".join(rows)


def render() -> str:
    """The whole of docs/configuration.md."""
    parts = [PREAMBLE]
    for section in SECTIONS:
        parts.append(f"{section.heading}\n{section.intro}{section_table(section.cls)}"
                     f"{section.outro}")
    parts.append(POSTAMBLE)
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
