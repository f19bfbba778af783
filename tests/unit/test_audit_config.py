"""`[audit]` in the config: defaults, checks, and TLS that needs the [tls] identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AuditSection, load_config
from agent.errors import ConfigError

BASE = """
[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = 4242
called_ae = "PACS"
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + text)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_absent_section_disables_auditing(tmp_path: Path) -> None:
    assert load(tmp_path, "").audit is None  # type: ignore[attr-defined]


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, '[audit]\nhost = "arr.example"\nport = 514\ntransport = "udp"\n')
    assert config.audit == AuditSection(host="arr.example", port=514,  # type: ignore[attr-defined]
                                        transport="udp")
    assert AuditSection("h", 1).transport == "tls"
    assert AuditSection("h", 1).backlog_alert_s == 3600.0


def test_tls_transport_needs_the_tls_identity(tmp_path: Path) -> None:
    assert problems(tmp_path, '[audit]\nhost = "arr"\nport = 6514\n') == [
        'agent.toml: [audit] transport: expected a [tls] section (certificate, private_key, '
        'ca_file) when transport = "tls", or transport = "tcp" / "udp", got no [tls] section']


def test_tls_transport_with_tls_section_loads(tmp_path: Path) -> None:
    config = load(tmp_path, '[audit]\nhost = "arr"\nport = 6514\n[tls]\ncertificate = "a.crt"\n'
                            'private_key = "a.key"\nca_file = "ca.pem"\n')
    assert config.audit.transport == "tls"  # type: ignore[attr-defined]


def test_every_bad_value_is_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, '[audit]\nport = 0\ntransport = "syslog"\nbacklog_alert_s = 1\n'
                               'udp_max_bytes = 70000\nretry_initial_s = 10\nretry_max_s = 5\n'
                               'colour = "red"\n')
    text = "\n".join(found)
    for fragment in ("[audit] host: expected a host name or IP address",
                     "[audit] port: expected an integer",
                     "[audit] transport: expected one of \"tls\", \"tcp\", \"udp\"",
                     "[audit] backlog_alert_s:", "[audit] udp_max_bytes:",
                     "[audit] retry_max_s: expected a number >= retry_initial_s (10)",
                     "[audit] colour: expected one of the keys"):
        assert fragment in text, (fragment, found)
