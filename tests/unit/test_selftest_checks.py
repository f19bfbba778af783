"""The selftest's checks that need no peer: clock, certificate, spool."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.config import load_config
from agent.selftest import certificate_check, clock_check, spool_check


def config_for(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
                    '[device]\ndriver = "simulated"\n'
                    '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
                    'called_ae = "PACS"\n' + extra)
    return path


def test_a_clock_in_1970_or_far_future_fails() -> None:
    assert not clock_check(datetime(1970, 1, 1, tzinfo=UTC)).ok
    assert not clock_check(datetime(2150, 1, 1, tzinfo=UTC)).ok
    assert clock_check(datetime(2026, 12, 6, tzinfo=UTC)).ok


def test_the_spool_must_exist_be_writable_and_have_room(tmp_path: Path) -> None:
    config = load_config(config_for(tmp_path, "[queue]\nmin_free_mb = 0\n"))
    assert not spool_check(config).ok                         # not made yet
    (tmp_path / "spool").mkdir()
    assert spool_check(config).ok
    greedy = load_config(config_for(tmp_path, "[queue]\nmin_free_mb = 100000000\n"))
    check = spool_check(greedy)
    assert not check.ok and "min_free_mb" in check.detail


def test_certificate_expiry(tmp_path: Path) -> None:
    from support.certs import TestCA

    ca = TestCA.create(tmp_path / "ca")
    for days, expired, ok in ((365, False, True), (10, False, False), (365, True, False)):
        pair = ca.issue(f"m{days}{expired}", days=days, expired=expired)
        config = load_config(config_for(
            tmp_path, f'[tls]\ncertificate = "{pair.certificate}"\n'
                      f'private_key = "{pair.private_key}"\nca_file = "{pair.ca_file}"\n'))
        assert certificate_check(config).ok is ok, (days, expired)
    assert certificate_check(load_config(config_for(tmp_path))).skipped
