"""load_config: the example configs load, and every bad value is reported with file, section, key,
expectation and the value found, all at once."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    KNOWN_IODS,
    KNOWN_TRANSFER_SYNTAXES,
    AgentConfig,
    default_config_path,
    load_config,
)
from agent.errors import ConfigError
from drivers.simulated import SimulatedDriver

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

DESTINATION = """
[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = 4242
called_ae = "PACS"
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.problems, "ConfigError without problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only_problem(tmp_path: Path, text: str) -> str:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    return problems[0]


# --- the shipped configs ------------------------------------------------------------------


def test_example_config_loads_with_every_section() -> None:
    config = load_config(CONFIG_DIR / "agent.example.toml")

    assert config.path == CONFIG_DIR / "agent.example.toml"
    assert config.agent.spool_dir == CONFIG_DIR / "spool"
    assert config.device.driver == "simulated"
    assert [d.name for d in config.destinations] == ["orthanc"]
    assert config.destinations[0].called_ae == "ORTHANC"
    assert config.worklist is None
    assert config.mpps is None


def test_example_config_sets_every_key(tmp_path: Path) -> None:
    # The example documents every key: with its optional sections uncommented, each section's
    # table holds every field of that section's dataclass.
    text = (CONFIG_DIR / "agent.example.toml").read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^#(?=[\[a-z])", "", text)
    config = load_config(write(tmp_path, uncommented))

    assert config.worklist is not None
    assert config.worklist.called_ae == "ORTHANC"
    assert config.mpps is not None
    sections: dict[str, Any] = {
        "agent": config.agent,
        "listener": config.listener,
        "api": config.api,
        "device": config.device,
        "modality": config.modality,
        "worklist": config.worklist,
        "destinations": config.destinations[0],
        "mpps": config.mpps,
        "queue": config.queue,
        "watch_folder": config.watch_folder,
        "tls": config.tls,
    }
    for name, section in sections.items():
        table = re.search(rf"(?ms)^\[+{name}\]+[^\n]*\n(.*?)(?=^\[|\Z)", uncommented)
        assert table is not None, name
        if name == "destinations":
            # one dimse archive and one stow-rs archive: between them, every key
            tables = re.findall(r"(?ms)^\[\[destinations\]\][^\n]*\n(.*?)(?=^\[|^# [A-Z]|\Z)",
                                uncommented)
            assert len(tables) == 2
            assert config.destinations[1].kind == "stow-rs"
            for item in dataclasses.fields(section):
                # credentials_file: the alternative to token_file, shown in a comment
                pattern = (r"# or credentials_file" if item.name == "credentials_file"
                           else rf"(?m)^{item.name} = ")
                assert any(re.search(pattern, t) for t in tables), item.name
            continue
        for item in dataclasses.fields(section):
            if (name, item.name) == ("device", "options"):
                assert "[device.options]" in uncommented
                continue
            assert re.search(rf"(?m)^{item.name} = ", table.group(1)), (name, item.name)


def test_example_device_options_satisfy_the_simulated_driver() -> None:
    config = load_config(CONFIG_DIR / "agent.example.toml")
    options = SimulatedDriver.validate_options(config.device.options)
    assert set(options) == set(config.device.options)


def test_minimal_simulated_config_loads_with_defaults() -> None:
    config = load_config(CONFIG_DIR / "simulated.toml")

    assert config.agent.ae_title == "MODALITY1"
    assert config.agent.spool_dir == CONFIG_DIR / "spool"
    assert config.listener.port == 11112
    assert config.device.driver == "simulated"
    assert dict(config.device.options) == {}
    assert len(config.destinations) == 1
    assert config.queue.retry_max_s == 300.0


# --- reading ------------------------------------------------------------------------------


def test_missing_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert str(path) in problem
    assert "\n" not in problem


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path}: cannot read config file")


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nae_title = "A"\nlog_level = INFO\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: not valid TOML: ")
    assert "line 3, column 13" in problem


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'[agent]\nae_title = "\xff"\n', "not UTF-8 (byte 20 is 0xff)"),
        (b"x = " + b"9" * 5000, "not valid TOML"),
        (b"x = " + b"[" * 100_000, "nested too deeply"),
    ],
    ids=["latin-1", "huge-integer", "deep-nesting"],
)
def test_undecodable_files_raise_config_error(tmp_path: Path, raw: bytes, fragment: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(str(path))
    assert fragment in problem


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\xef\xbb\xbf" + DESTINATION.encode())
    assert load_config(path).destinations[0].name == "pacs"


# --- one bad value, one problem naming file, section, key, expectation and value -------------


BAD_VALUES = [
    # (TOML, where, expected fragment, got)
    ("[listener]\nport = 70000", "[listener] port", "an integer 1..65535", "70000"),
    ('[listener]\nport = "104a"', "[listener] port", "an integer 1..65535", '"104a"'),
    ("[listener]\nport = 0", "[listener] port", "an integer 1..65535", "0"),
    ("[api]\nport = 8470.0", "[api] port", "an integer 1..65535", "8470.0"),
    ('[api]\nhost = ""', "[api] host", "a host name or IP address", '""'),
    ('[api]\nhost = "local host"', "[api] host", "no whitespace", '"local host"'),
    ("[api]\nhost = 127", "[api] host", "a host name", "127"),
    ('[agent]\nae_title = ""', "[agent] ae_title", "an AE title", '"" (empty or all spaces)'),
    ('[agent]\nae_title = "    "', "[agent] ae_title", "not all spaces", '"    " (empty'),
    (
        '[agent]\nae_title = "ABCDEFGHIJKLMNOPQ"',
        "[agent] ae_title",
        "1..16 printable ASCII",
        '"ABCDEFGHIJKLMNOPQ" (17 characters)',
    ),
    (
        '[agent]\nae_title = "A\\\\B"',
        "[agent] ae_title",
        "no backslash",
        '"A\\\\B" (contains a backslash)',
    ),
    (
        '[agent]\nae_title = "A\\tB"',
        "[agent] ae_title",
        "an AE title",
        '"A\\u0009B" (contains a control or non-ASCII character)',
    ),
    ('[agent]\nae_title = "MÜNCHEN"', "[agent] ae_title", "ASCII", '"MÜNCHEN" (contains'),
    ('[agent]\nlog_level = "info"', "[agent] log_level", '"DEBUG", "INFO", "WARNING"', '"info"'),
    ('[agent]\nspool_dir = ""', "[agent] spool_dir", "a path", '""'),
    ('[agent]\nspool_dir = "~/spool"', "[agent] spool_dir", "a path", "(~ is not expanded)"),
    ("[agent]\nspool_dir = 5", "[agent] spool_dir", "a path", "5"),
    ('[agent]\nuid_root = "1.2.840."', "[agent] uid_root", "not ending with a dot", '"1.2.840."'),
    ('[agent]\nuid_root = "1.02.3"', "[agent] uid_root", "leading zero", '"1.02.3"'),
    ('[agent]\nuid_root = "1.2.a"', "[agent] uid_root", "digits and dots", '"1.2.a"'),
    ('[agent]\nuid_root = ".1.2"', "[agent] uid_root", "a UID root", '".1.2"'),
    (
        '[agent]\nuid_root = "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17"',
        "[agent] uid_root",
        "at most 40 characters",
        "(41 characters)",
    ),
    ('[device]\ndriver = ""', "[device] driver", "a driver name of a-z 0-9 _ -", '""'),
    ('[device]\ndriver = "Simulated"', "[device] driver", "a driver name", '"Simulated"'),
    ('[device]\noptions = "fast"', "[device] options", "a table ([device.options])", '"fast"'),
    ('[modality]\nmodality = "ot"', "[modality] modality", "A-Z 0-9 _ and space", '"ot"'),
    ('[modality]\nmodality = ""', "[modality] modality", "1..16", '""'),
    ('[modality]\nmodality = "CT-1"', "[modality] modality", "a DICOM modality code", '"CT-1"'),
    ('[modality]\niod = "ct"', "[modality] iod", '"secondary-capture"', '"ct"'),
    (
        '[modality]\ntransfer_syntax = "jpeg"',
        "[modality] transfer_syntax",
        '"explicit-little"',
        '"jpeg"',
    ),
    (
        '[modality]\nstation_name = "ROOM-WITH-A-LONG-NAME"',
        "[modality] station_name",
        "at most 16 characters",
        "(21 characters)",
    ),
    (
        f'[modality]\nmanufacturer = "{"M" * 65}"',
        "[modality] manufacturer",
        "at most 64 characters",
        "\"... (65 characters)",
    ),
    ('[modality]\nmodel_name = "A\\\\B"', "[modality] model_name", "no backslash", "backslash"),
    ("[modality]\ninstitution_name = 1", "[modality] institution_name", "a string", "1"),
    ("[queue]\nretry_initial_s = 0", "[queue] retry_initial_s", "a number 0.1..3600", "0"),
    ("[queue]\nretry_initial_s = nan", "[queue] retry_initial_s", "a number 0.1..3600", "nan"),
    # finding 11: a retry every microsecond made the forwarder loop burn 70 % of a core
    ("[queue]\nretry_initial_s = 1e-6", "[queue] retry_initial_s", "a number 0.1..3600",
     "1e-06"),
    ("[queue]\nretention_s = -1", "[queue] retention_s", "a number 0..31536000", "-1"),
    ("[queue]\nretention_s = inf", "[queue] retention_s", "a number 0..31536000", "inf"),
    ("[queue]\nretention_s = 1e300", "[queue] retention_s", "a number 0..31536000", "1e+300"),
    ('[queue]\nretention_s = "1d"', "[queue] retention_s", "a number 0..31536000", '"1d"'),
    ("[api]\nmax_frames = 10001", "[api] max_frames", "an integer 1..10000", "10001"),
    ("[api]\nmax_frames = 0", "[api] max_frames", "an integer 1..10000", "0"),
    ("[api]\nmax_import_files = 100001", "[api] max_import_files", "an integer 1..100000",
     "100001"),
    ("[api]\nmax_connections = 3", "[api] max_connections", "an integer 4..1024", "3"),
    ("[api]\nidle_timeout_s = 0.5", "[api] idle_timeout_s", "a number 1..300", "0.5"),
    ("[api]\nidle_timeout_s = 301", "[api] idle_timeout_s", "a number 1..300", "301"),
    ('[api]\ntoken_file = ""', "[api] token_file", "a path", '""'),
    ('[api]\nimport_folders = "/data"', "[api] import_folders", "a list of paths", '"/data"'),
    ('[api]\nimport_folders = ["/data", ""]', "[api] import_folders", "a list of paths",
     "an array of 2 items (#2 is not a path)"),
    ('[api]\nimport_folders = ["~/in"]', "[api] import_folders", "a list of paths",
     "(#1: ~ is not expanded)"),
    ('[api]\nallowed_hosts = "console"', "[api] allowed_hosts", "a list of host names",
     '"console"'),
    ('[api]\nallowed_hosts = ["a b"]', "[api] allowed_hosts", "no whitespace",
     "an array of 1 items (#1 is not a host name)"),
    ('[api]\nallowed_hosts = ["evil.example/x"]', "[api] allowed_hosts", 'no "/"',
     "(#1 is not a host name)"),
    ('[api]\nallowed_hosts = [""]', "[api] allowed_hosts", "a list of host names",
     "(#1 is not a host name)"),
    ('[watch_folder]\npath = "in"\nmax_file_mb = 0', "[watch_folder] max_file_mb",
     "an integer 1..65536", "0"),
    ('[watch_folder]\npath = "in"\nmax_file_mb = 65537', "[watch_folder] max_file_mb",
     "an integer 1..65536", "65537"),
    ('[watch_folder]\npath = "in"\nretention_s = -5', "[watch_folder] retention_s",
     "a number 0..31536000", "-5"),
    ('[watch_folder]\npath = "in"\nrescan_s = 0.000001', "[watch_folder] rescan_s",
     "a number 0.5..3600", "1e-06"),
    (
        "[queue]\nretry_initial_s = 10\nretry_max_s = 5",
        "[queue] retry_max_s",
        "a number >= retry_initial_s (10)",
        "5",
    ),
    (
        "[queue]\nretry_initial_s = 500",
        "[queue] retry_max_s",
        "a number >= retry_initial_s (500)",
        "300 (the default)",
    ),
    (
        "[queue]\nretention_s = 1979-05-27",
        "[queue] retention_s",
        "a number 0..31536000",
        "the date 1979-05-27",
    ),
]


@pytest.mark.parametrize(("toml", "where", "expected", "got"), BAD_VALUES)
def test_bad_value_is_reported_with_file_section_key_expectation_and_value(
    tmp_path: Path, toml: str, where: str, expected: str, got: str
) -> None:
    problem = only_problem(tmp_path, toml + "\n" + DESTINATION)

    prefix = f"agent.toml: {where}: expected "
    assert problem.startswith(prefix), problem
    expectation, _, found = problem[len(prefix) :].rpartition(", got ")
    assert expected in expectation, problem
    assert got in found, problem
    assert "\n" not in problem


BAD_DESTINATION_VALUES = [
    ('name = ""', "name", "a name of A-Z a-z 0-9 _ -", '""'),
    ('name = "my pacs"', "name", "a name of", '"my pacs"'),
    ("port = 104.5", "port", "an integer 1..65535", "104.5"),
    ('called_ae = "PACS\\\\2"', "called_ae", "an AE title", "(contains a backslash)"),
    ('storage_commitment = "yes"', "storage_commitment", "true or false", '"yes"'),
    ("storage_commitment = 1", "storage_commitment", "true or false", "1"),
    ("commitment_timeout_s = 0", "commitment_timeout_s", "a number 10..604800", "0"),
    ("commitment_timeout_s = -0.5", "commitment_timeout_s", "a number 10..604800", "-0.5"),
    ("dimse_timeout_s = 1e300", "dimse_timeout_s", "a number 1..3600", "1e+300"),
    ("max_associations = 17", "max_associations", "an integer 1..16", "17"),
    ("max_associations = 0", "max_associations", "an integer 1..16", "0"),
]


@pytest.mark.parametrize(("line", "key", "expected", "got"), BAD_DESTINATION_VALUES)
def test_bad_destination_value_names_the_destination_by_position(
    tmp_path: Path, line: str, key: str, expected: str, got: str
) -> None:
    base = {
        "name": 'name = "second"',
        "host": 'host = "10.0.0.2"',
        "port": "port = 104",
        "called_ae": 'called_ae = "ARCHIVE2"',
    }
    base[key] = line
    text = DESTINATION + "\n[[destinations]]\n" + "\n".join(base.values()) + "\n"
    problem = only_problem(tmp_path, text)

    prefix = f"agent.toml: [[destinations]] #2 {key}: expected "
    assert problem.startswith(prefix), problem
    expectation, _, found = problem[len(prefix) :].rpartition(", got ")
    assert expected in expectation, problem
    assert got in found, problem


# --- bool is not a number, and numbers are not bools ----------------------------------------


@pytest.mark.parametrize(
    "toml",
    [
        "[listener]\nport = true",
        "[api]\nport = false",
        "[queue]\nretry_initial_s = true",
        "[worklist]\nhost = \"h\"\nport = 1\ncalled_ae = \"RIS\"\nrefresh_s = true",
    ],
)
def test_bool_is_not_accepted_as_a_number(tmp_path: Path, toml: str) -> None:
    problem = only_problem(tmp_path, toml + "\n" + DESTINATION)
    assert re.search(r"expected an? (integer|number) .*, got (true|false)$", problem)


def test_bool_is_not_accepted_as_max_associations(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, DESTINATION + "max_associations = true\n")
    assert problem == (
        "agent.toml: [[destinations]] #1 max_associations: expected an integer 1..16, got true"
    )


def test_integers_are_accepted_where_floats_are_expected(tmp_path: Path) -> None:
    text = (
        "[queue]\nretry_initial_s = 1\nretry_max_s = 60\nretention_s = 0\n"
        + DESTINATION
        + "commitment_timeout_s = 600\n"
    )
    config = load_config(write(tmp_path, text))

    assert config.queue == type(config.queue)(1.0, 60.0, 0.0)
    assert type(config.queue.retry_initial_s) is float
    assert type(config.destinations[0].commitment_timeout_s) is float


# --- every problem, not the first -----------------------------------------------------------


def test_all_problems_in_a_file_are_reported_together(tmp_path: Path) -> None:
    text = """
[agent]
ae_title = "THIS-AE-TITLE-IS-TOO-LONG"
log_level = "LOUD"

[listener]
port = 0

[modality]
modality = "ct"

[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = 4242
called_ae = "PACS"
max_associations = true

[[destinations]]
name = "pacs"
host = ""
port = 104

[queue]
retry_initial_s = -1
"""
    problems = problems_of(tmp_path, text)

    assert [problem.split(": expected")[0] for problem in problems] == [
        "agent.toml: [agent] ae_title",
        "agent.toml: [agent] log_level",
        "agent.toml: [listener] port",
        "agent.toml: [modality] modality",
        "agent.toml: [[destinations]] #1 max_associations",
        "agent.toml: [[destinations]] #2 name",
        "agent.toml: [[destinations]] #2 host",
        "agent.toml: [[destinations]] #2 called_ae",
        "agent.toml: [queue] retry_initial_s",
    ]
    assert problems[5].endswith('got "pacs" (also #1)')
    assert problems[7].endswith("got nothing (the key is required)")


def test_problems_are_prefixed_with_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[listener]\nport = -1\n" + DESTINATION, name="room2.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "room2.toml: [listener] port: expected an integer 1..65535, got -1"
    ]


# --- structure: sections, unknown names, destinations -----------------------------------------


def test_empty_file_fails_because_a_destination_is_required(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "") == [
        "agent.toml: [[destinations]]: expected at least one [[destinations]] table, got none"
    ]


def test_unknown_key_names_the_known_keys(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "[listener]\nprot = 104\n" + DESTINATION)
    assert problem == (
        "agent.toml: [listener] prot: expected one of the keys (host, port, tls, "
        "verify_hostname), got an unknown key"
    )


def test_unknown_destination_key(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, DESTINATION + "calling_ae = 'X'\n")
    assert problem.startswith("agent.toml: [[destinations]] #1 calling_ae: expected one of the")
    assert "name, host, port, called_ae, storage_commitment" in problem


def test_unknown_section_names_the_known_sections(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "[listner]\nport = 104\n" + DESTINATION)
    assert problem.startswith("agent.toml: [listner]: expected one of the sections ([agent], ")
    assert "[[destinations]], [mpps], [queue], [watch_folder], [tls]), got an unknown section" \
        in problem


def test_top_level_key_outside_any_section(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, 'ae_title = "X"\n' + DESTINATION)
    assert problem.startswith("agent.toml: ae_title: expected one of the sections")
    assert problem.endswith("got an unknown top-level key")


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    assert only_problem(tmp_path, "listener = 104\n" + DESTINATION) == (
        "agent.toml: [listener]: expected a table, got 104"
    )


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("destinations = []", "got an empty array"),
        ('[destinations.pacs]\nhost = "h"', "got a table (write each archive as [[destinations]]"),
        ("destinations = 1", "got 1"),
    ],
)
def test_destinations_must_be_a_non_empty_array_of_tables(
    tmp_path: Path, text: str, got: str
) -> None:
    problem = only_problem(tmp_path, text)
    assert problem.startswith("agent.toml: [[destinations]]: expected ")
    assert got in problem


def test_destination_that_is_not_a_table(tmp_path: Path) -> None:
    assert only_problem(tmp_path, "destinations = [1]") == (
        "agent.toml: [[destinations]] #1: expected a table, got 1"
    )


def test_destination_names_must_be_unique(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, DESTINATION + DESTINATION)
    assert problem == (
        'agent.toml: [[destinations]] #2 name: expected a name no other destination uses, '
        'got "pacs" (also #1)'
    )


def test_several_destinations_keep_their_order_and_defaults(tmp_path: Path) -> None:
    second = DESTINATION.replace('"pacs"', '"backup"') + "storage_commitment = false\n"
    config = load_config(write(tmp_path, DESTINATION + second))

    assert [d.name for d in config.destinations] == ["pacs", "backup"]
    assert config.destinations[0].storage_commitment is True
    assert config.destinations[1].storage_commitment is False
    assert config.destinations[1].max_associations == 3


@pytest.mark.parametrize("section", ["worklist", "mpps"])
def test_optional_peer_sections_require_host_port_and_called_ae(
    tmp_path: Path, section: str
) -> None:
    problems = problems_of(tmp_path, f"[{section}]\n" + DESTINATION)
    assert problems == [
        f"agent.toml: [{section}] {key}: expected {expected}, got nothing (the key is required)"
        for key, expected in [
            ("host", "a host name or IP address (non-empty, no whitespace)"),
            ("port", "an integer 1..65535"),
            (
                "called_ae",
                "an AE title: 1..16 printable ASCII characters, no backslash, not all spaces",
            ),
        ]
    ]


def test_optional_peer_sections_are_none_when_absent_and_filled_when_present(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, DESTINATION)).worklist is None
    text = (
        '[worklist]\nhost = "ris"\nport = 104\ncalled_ae = " RIS "\n'
        '[mpps]\nhost = "ris"\nport = 105\ncalled_ae = "RIS"\n' + DESTINATION
    )
    config = load_config(write(tmp_path, text))

    assert config.worklist is not None
    assert (config.worklist.called_ae, config.worklist.refresh_s) == ("RIS", 60.0)
    assert config.mpps is not None
    assert config.mpps.port == 105


# --- values that are accepted ---------------------------------------------------------------


def test_ae_titles_are_stripped_of_insignificant_spaces(tmp_path: Path) -> None:
    text = '[agent]\nae_title = "  CT ROOM 1      "\n' + DESTINATION.replace(
        '"PACS"', '"PACS "'
    )
    config = load_config(write(tmp_path, text))

    assert config.agent.ae_title == "CT ROOM 1"
    assert config.destinations[0].called_ae == "PACS"


def test_sixteen_character_ae_title_with_padding_is_accepted(tmp_path: Path) -> None:
    text = '[agent]\nae_title = " ABCDEFGHIJKLMNOP "\n' + DESTINATION
    config = load_config(write(tmp_path, text))
    assert config.agent.ae_title == "ABCDEFGHIJKLMNOP"


@pytest.mark.parametrize("uid_root", ["", "0", "1.2.840.10008", "2.25", "1.2.826.0.1.3680043.10"])
def test_valid_uid_roots(tmp_path: Path, uid_root: str) -> None:
    config = load_config(write(tmp_path, f'[agent]\nuid_root = "{uid_root}"\n' + DESTINATION))
    assert config.agent.uid_root == uid_root


def test_modality_strings(tmp_path: Path) -> None:
    text = (
        '[modality]\nmodality = "DX"\nstation_name = "ABCDEFGHIJKLMNOP"\n'
        f'institution_name = "{"I" * 64}"\nmanufacturer = "Ærø Medical"\n' + DESTINATION
    )
    config = load_config(write(tmp_path, text))

    assert config.modality.modality == "DX"
    assert config.modality.iod in KNOWN_IODS
    assert config.modality.transfer_syntax in KNOWN_TRANSFER_SYNTAXES
    assert len(config.modality.institution_name) == 64


def test_device_options_pass_through_unchecked_and_read_only(tmp_path: Path) -> None:
    text = (
        '[device]\ndriver = "serial_v2-x"\n[device.options]\nport = "/dev/ttyUSB0"\n'
        "baudrate = 115200\nwhatever = [1, 2]\n" + DESTINATION
    )
    config = load_config(write(tmp_path, text))

    assert config.device.driver == "serial_v2-x"
    assert dict(config.device.options) == {
        "port": "/dev/ttyUSB0",
        "baudrate": 115200,
        "whatever": [1, 2],
    }
    with pytest.raises(TypeError):
        config.device.options["baudrate"] = 9600  # type: ignore[index]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESTINATION))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listener.port = 1  # type: ignore[misc]


# --- paths --------------------------------------------------------------------------------


def test_relative_spool_dir_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    write(folder, '[agent]\nspool_dir = "../var/spool"\n' + DESTINATION)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("../etc/agent.toml"))

    assert config.path.is_absolute()
    assert config.path.parent.resolve() == folder.resolve()
    assert config.agent.spool_dir.is_absolute()
    assert config.agent.spool_dir.resolve() == (tmp_path / "var" / "spool").resolve()
    assert not (tmp_path / "var").exists(), "load_config must not create the spool"


def test_default_spool_dir_is_next_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESTINATION))
    assert config.agent.spool_dir == tmp_path / "spool"
    assert not (tmp_path / "spool").exists()


def test_absolute_spool_dir_is_kept(tmp_path: Path) -> None:
    spool = tmp_path / "elsewhere" / "spool"
    config = load_config(write(tmp_path, f'[agent]\nspool_dir = "{spool}"\n' + DESTINATION))
    assert config.agent.spool_dir == spool


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CONFIG_PATH_ENV, raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == Path("/etc/modality-agent/agent.toml")
    monkeypatch.setenv(CONFIG_PATH_ENV, "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path / "room1.toml"))
    assert default_config_path() == tmp_path / "room1.toml"


# --- arbitrary input raises only ConfigError ------------------------------------------------


def _toml_string(text: str) -> str:
    escaped = "".join(
        "\\" + char if char in '"\\'
        else f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F
        else char
        for char in text
    )
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_string(key)} = {_toml_value(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    raise AssertionError(type(value))


_SCALARS = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=-3, max_value=70000)
    | st.floats(allow_subnormal=False)
    | st.text(max_size=20)
    | st.text(alphabet="ABCPS .0123456789\\ ", max_size=20)
    | st.datetimes()
    | st.dates()
    | st.times()
)
_TOML_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
# tmp_path is shared between examples on purpose: each example overwrites the same file.
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_FUZZED_KEYS = [
    ("agent", "ae_title"),
    ("agent", "spool_dir"),
    ("agent", "uid_root"),
    ("listener", "port"),
    ("device", "driver"),
    ("device", "options"),
    ("modality", "modality"),
    ("modality", "station_name"),
    ("worklist", "refresh_s"),
    ("queue", "retry_max_s"),
    ("queue", "retention_s"),
    ("destinations", "max_associations"),
    ("destinations", "storage_commitment"),
    ("destinations", "name"),
    ("destinations", "dimse_timeout_s"),
    ("api", "token_file"),
    ("api", "import_folders"),
    ("api", "allowed_hosts"),
    ("api", "idle_timeout_s"),
    ("api", "max_frames"),
    ("watch_folder", "retention_s"),
    ("watch_folder", "max_file_mb"),
    ("tls", "certificate"),
    ("tls", "profile"),
    ("listener", "tls"),
    ("destinations", "tls"),
    ("destinations", "verify_hostname"),
    ("nosuchsection", "key"),
]


@FUZZ
@given(
    assignments=st.lists(
        st.tuples(st.sampled_from(_FUZZED_KEYS), _TOML_VALUES), min_size=1, max_size=4
    )
)
def test_arbitrary_values_raise_only_config_error(
    tmp_path: Path, assignments: list[tuple[tuple[str, str], Any]]
) -> None:
    tables: dict[str, dict[str, Any]] = {
        "worklist": {"host": "ris", "port": 104, "called_ae": "R"},
        "watch_folder": {"path": "in"},
    }
    destination: dict[str, Any] = {"name": "pacs", "host": "h", "port": 104, "called_ae": "PACS"}
    for (section, key), value in assignments:
        if section == "destinations":
            destination[key] = value
        else:
            tables.setdefault(section, {})[key] = value
    lines = []
    for section, table in tables.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    lines.append("[[destinations]]")
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in destination.items())

    try:
        config = load_config(write(tmp_path, "\n".join(lines) + "\n"))
    except ConfigError as err:
        assert err.problems
        assert all(problem.startswith("agent.toml: ") for problem in err.problems)
        assert all("\n" not in problem for problem in err.problems)
    else:
        assert isinstance(config, AgentConfig)


@FUZZ
@given(text=st.text(max_size=200) | st.text(alphabet='[]="#.\n =aegnt_ioprsdl1234', max_size=200))
def test_arbitrary_file_contents_raise_only_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path)
    except ConfigError as err:
        assert err.problems


def test_watch_folder_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[watch_folder]\npath = "incoming"\nsettle_s = 2\n' + DESTINATION)
    section = load_config(path).watch_folder
    assert section is not None
    assert section.path == tmp_path / "incoming" and section.settle_s == 2.0
    assert section.after_import == "move"
    path.write_text('[watch_folder]\npath = "in"\nafter_import = "shred"\n' + DESTINATION)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "[watch_folder] after_import" in str(err.value)


def test_config_knows_exactly_the_iods_and_syntaxes_the_builder_makes() -> None:
    from agent import config as config_module
    from agent import iod

    assert set(config_module.KNOWN_IODS) == set(iod.KNOWN_IODS)
    assert set(config_module.KNOWN_TRANSFER_SYNTAXES) == set(iod.KNOWN_TRANSFER_SYNTAXES)


# --- issue 13: the [api] and [watch_folder] keys that bound what a request or a file may cost -


def test_new_api_and_watch_folder_keys_have_safe_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[watch_folder]\npath = "in"\n' + DESTINATION))

    api = config.api
    assert api.token_file == tmp_path / "spool" / "api-token"
    assert (api.max_frames, api.max_import_files) == (100, 1000)
    assert (api.max_connections, api.idle_timeout_s) == (32, 10.0)
    assert api.import_folders == ()            # no folder: `import` through the API is refused
    assert api.allowed_hosts == ()
    assert config.watch_folder is not None
    assert config.watch_folder.retention_s == config.queue.retention_s == 86400.0
    assert config.watch_folder.max_file_mb == 2048


def test_token_file_default_follows_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "var" / "spool"
    config = load_config(write(tmp_path, f'[agent]\nspool_dir = "{spool}"\n' + DESTINATION))
    assert config.api.token_file == spool / "api-token"


def test_api_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    text = (
        '[api]\ntoken_file = "secrets/token"\n'
        f'import_folders = ["usb", "{tmp_path / "abs"}"]\n' + DESTINATION
    )
    config = load_config(write(tmp_path, text))

    assert config.api.token_file == tmp_path / "secrets" / "token"
    assert config.api.import_folders == (tmp_path / "usb", tmp_path / "abs")
    assert not (tmp_path / "secrets").exists(), "load_config must not create anything"


def test_allowed_hosts_are_kept_lower_case(tmp_path: Path) -> None:
    # Host names are case-insensitive (RFC 3986 3.2.2): the API compares lower-case names.
    text = '[api]\nallowed_hosts = ["Modality-1.Ward.example", "10.0.0.5", "[::1]"]\n'
    config = load_config(write(tmp_path, text + DESTINATION))
    assert config.api.allowed_hosts == ("modality-1.ward.example", "10.0.0.5", "[::1]")


def test_watch_folder_retention_defaults_to_the_queue_s_and_may_differ(tmp_path: Path) -> None:
    text = '[queue]\nretention_s = 600\n[watch_folder]\npath = "in"\n' + DESTINATION
    section = load_config(write(tmp_path, text)).watch_folder
    assert section is not None and section.retention_s == 600.0

    text = text.replace('path = "in"', 'path = "in"\nretention_s = 0\nmax_file_mb = 10')
    section = load_config(write(tmp_path, text)).watch_folder
    assert section is not None and (section.retention_s, section.max_file_mb) == (0.0, 10)


# --- finding 11: every numeric key has a finite range --------------------------------------

#: (section, key) -> (lowest, highest) accepted; docs/configuration.md lists the same
BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("listener", "port"): (1, 65535),
    ("api", "port"): (1, 65535),
    ("api", "max_frames"): (1, 10_000),
    ("api", "max_import_files"): (1, 100_000),
    ("api", "max_connections"): (4, 1024),
    ("api", "idle_timeout_s"): (1, 300),
    ("worklist", "port"): (1, 65535),
    ("worklist", "refresh_s"): (1, 86_400),
    ("worklist", "max_results"): (1, 100_000),
    ("worklist", "days_before"): (0, 31),
    ("worklist", "days_after"): (0, 31),
    ("worklist", "timeout_s"): (1, 600),
    ("destinations", "port"): (1, 65535),
    ("destinations", "commitment_timeout_s"): (10, 604_800),
    ("destinations", "max_associations"): (1, 16),
    ("destinations", "dimse_timeout_s"): (1, 3600),
    ("destinations", "commitment_report_wait_s"): (0, 600),
    ("destinations", "max_request_mb"): (1, 4096),
    ("destinations", "request_timeout_s"): (1, 3600),
    ("mpps", "port"): (1, 65535),
    ("watch_folder", "settle_s"): (0, 3600),
    ("watch_folder", "rescan_s"): (0.5, 3600),
    ("watch_folder", "retention_s"): (0, 31_536_000),
    ("watch_folder", "max_file_mb"): (1, 65536),
    ("queue", "retry_initial_s"): (0.1, 3600),
    ("queue", "retry_max_s"): (0.1, 86_400),
    ("queue", "retention_s"): (0, 31_536_000),
    ("queue", "min_free_mb"): (0, 100_000_000),
}


def _numeric_keys() -> set[tuple[str, str]]:
    """Every int or float field of every section (annotations are strings here)."""
    from agent import config as config_module

    sections = {
        "listener": config_module.ListenerSection, "api": config_module.ApiSection,
        "agent": config_module.AgentSection, "device": config_module.DeviceSection,
        "modality": config_module.ModalitySection, "worklist": config_module.WorklistSection,
        "destinations": config_module.DestinationSection, "mpps": config_module.MppsSection,
        "watch_folder": config_module.WatchFolderSection, "queue": config_module.QueueSection,
    }
    return {
        (name, item.name)
        for name, cls in sections.items()
        for item in dataclasses.fields(cls)
        if item.type in ("int", "float")
    }


def _plain(number: float) -> str:
    """As the range is written in messages and docs: 31536000, not 3.1536e+07."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def test_every_numeric_key_has_a_documented_range() -> None:
    # a new numeric key without a range fails here, before it can take 1e-6 or 1e300
    assert _numeric_keys() == set(BOUNDS)
    doc = (CONFIG_DIR.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    for (section, key), (low, high) in BOUNDS.items():
        heading = "[[destinations]]" if section == "destinations" else f"[{section}]"
        part = re.search(rf"(?ms)^## `{re.escape(heading)}`.*?(?=^## |\Z)", doc)
        assert part is not None, heading
        rows = [row for row in part.group(0).splitlines()
                if row.startswith("| ") and f"`{key}`" in row.split(" | ")[0]]
        assert len(rows) == 1, (section, key)
        assert f"{_plain(low)}..{_plain(high)}" in rows[0], (section, key, rows[0])


STOW_DESTINATION = """
[[destinations]]
name = "web"
kind = "stow-rs"
url = "https://pacs.example/dicom-web"
"""
STOW_ONLY_KEYS = {"max_request_mb", "request_timeout_s"}


def _with(section: str, key: str, value: str) -> str:
    assignment = f"{key} = {value}\n"
    if section == "destinations" and key in STOW_ONLY_KEYS:
        return STOW_DESTINATION + assignment
    if section == "destinations":
        return re.sub(rf"(?m)^{key} = .*\n", "", DESTINATION) + assignment
    header = {
        "worklist": '[worklist]\nhost = "ris"\nport = 104\ncalled_ae = "RIS"\n',
        "mpps": '[mpps]\nhost = "ris"\nport = 104\ncalled_ae = "RIS"\n',
        "watch_folder": '[watch_folder]\npath = "in"\n',
        # retry_max_s may not be below retry_initial_s: both at the ends of their ranges
        "queue": "[queue]\nretry_initial_s = 0.1\nretry_max_s = 86400\n",
    }.get(section, f"[{section}]\n")
    header = re.sub(rf"(?m)^{key} = .*\n", "", header)
    return header + assignment + DESTINATION


def _value_of(config: AgentConfig, section: str, key: str) -> Any:
    holder = config.destinations[0] if section == "destinations" else getattr(config, section)
    return getattr(holder, key)


@pytest.mark.parametrize(("section", "key"), sorted(BOUNDS))
def test_numeric_key_accepts_its_bounds(tmp_path: Path, section: str, key: str) -> None:
    for bound in BOUNDS[section, key]:
        config = load_config(write(tmp_path, _with(section, key, _plain(bound))))
        assert _value_of(config, section, key) == bound


@pytest.mark.parametrize(("section", "key"), sorted(BOUNDS))
def test_numeric_key_refuses_absurd_values(tmp_path: Path, section: str, key: str) -> None:
    low, high = BOUNDS[section, key]
    is_int = isinstance(low, int) and isinstance(high, int) and key in {
        "port", "max_frames", "max_import_files", "max_connections", "max_results",
        "days_before", "days_after", "max_associations", "max_file_mb", "max_request_mb"}
    outside = [str(high + 1), "1" + "0" * 30, str(low - 1)] if is_int else [
        f"{low - 0.05 if low else -1e-06!r}", f"{high * 1.01!r}", "1e300", "-1e300", "nan",
        "inf", "-inf", "1" + "0" * 400]
    label = "[[destinations]] #1" if section == "destinations" else f"[{section}]"
    kind = "an integer" if is_int else "a number"
    for value in outside:
        problems = problems_of(tmp_path, _with(section, key, value))
        assert any(
            problem.startswith(
                f"agent.toml: {label} {key}: expected {kind} {_plain(low)}..{_plain(high)}, got "
            )
            for problem in problems
        ), (value, problems)


# --- issue 14: DICOM TLS ([tls] and tls / verify_hostname on each DICOM path) -----------------

TLS = """
[tls]
certificate = "tls/agent.crt"
private_key = "tls/agent.key"
ca_file = "/etc/hospital/ca.pem"
"""
PEER_SECTIONS = {
    "listener": "[listener]\n",
    "worklist": '[worklist]\nhost = "ris"\nport = 104\ncalled_ae = "RIS"\n',
    "mpps": '[mpps]\nhost = "ris"\nport = 104\ncalled_ae = "RIS"\n',
}


def test_tls_is_off_by_default_and_host_names_are_verified_when_on(tmp_path: Path) -> None:
    text = PEER_SECTIONS["worklist"] + PEER_SECTIONS["mpps"] + DESTINATION
    config = load_config(write(tmp_path, text))

    assert config.tls is None
    for section in (config.listener, config.worklist, config.mpps, config.destinations[0]):
        assert section is not None
        assert (section.tls, section.verify_hostname) == (False, True)


def test_tls_section_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TLS + DESTINATION))

    assert config.tls is not None
    assert config.tls.certificate == tmp_path / "tls" / "agent.crt"
    assert config.tls.private_key == tmp_path / "tls" / "agent.key"
    assert config.tls.ca_file == Path("/etc/hospital/ca.pem")
    assert config.tls.profile == "bcp195-nd"
    assert not (tmp_path / "tls").exists(), "load_config must not touch the files"


@pytest.mark.parametrize("profile", ["bcp195-nd", "bcp195", "bcp195-extended"])
def test_tls_profiles_of_ps3_15_annex_b_are_accepted(tmp_path: Path, profile: str) -> None:
    config = load_config(write(tmp_path, TLS + f'profile = "{profile}"\n' + DESTINATION))
    assert config.tls is not None and config.tls.profile == profile


def test_unknown_tls_profile_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, TLS + 'profile = "tls1.0"\n' + DESTINATION)
    assert problem == (
        'agent.toml: [tls] profile: expected one of "bcp195-nd", "bcp195", "bcp195-extended", '
        'got "tls1.0"'
    )


def test_tls_section_requires_its_three_files(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[tls]\n" + DESTINATION)
    assert [p.split(":")[1].strip() for p in problems] == [
        "[tls] certificate", "[tls] private_key", "[tls] ca_file"]
    assert all(p.endswith("got nothing (the key is required)") for p in problems)


@pytest.mark.parametrize("section", ["listener", "worklist", "mpps", "destinations"])
def test_tls_true_without_a_tls_section_names_both(tmp_path: Path, section: str) -> None:
    if section == "destinations":
        text = DESTINATION + "tls = true\n"
        label = "[[destinations]] #1"
    else:
        text = PEER_SECTIONS[section] + "tls = true\n" + DESTINATION
        label = f"[{section}]"
    problem = only_problem(tmp_path, text)
    assert problem == (
        f"agent.toml: {label} tls: expected a [tls] section (certificate, private_key, "
        "ca_file) when tls = true, got no [tls] section"
    )


def test_tls_and_verify_hostname_are_read_on_every_dicom_path(tmp_path: Path) -> None:
    text = (
        TLS + "[listener]\ntls = true\nverify_hostname = false\n"
        + PEER_SECTIONS["worklist"] + "tls = true\n"
        + PEER_SECTIONS["mpps"] + "tls = true\nverify_hostname = false\n"
        + DESTINATION + "tls = true\n"
    )
    config = load_config(write(tmp_path, text))

    assert config.worklist is not None and config.mpps is not None
    assert (config.listener.tls, config.listener.verify_hostname) == (True, False)
    assert (config.worklist.tls, config.worklist.verify_hostname) == (True, True)
    assert (config.mpps.tls, config.mpps.verify_hostname) == (True, False)
    assert (config.destinations[0].tls, config.destinations[0].verify_hostname) == (True, True)


def test_tls_flags_must_be_booleans(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, TLS + DESTINATION + 'tls = "yes"\n')
    assert problem == 'agent.toml: [[destinations]] #1 tls: expected true or false, got "yes"'


# --- issue 16 item 3: the broad worklist query's filters ---------------------------------------

def test_worklist_filters_default_to_station_and_modality(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PEER_SECTIONS["worklist"] + DESTINATION))
    assert config.worklist is not None
    assert (config.worklist.filter_station_ae, config.worklist.filter_modality) == (True, True)


def test_worklist_filters_are_read(tmp_path: Path) -> None:
    text = PEER_SECTIONS["worklist"] + "filter_station_ae = false\nfilter_modality = true\n"
    config = load_config(write(tmp_path, text + DESTINATION))
    assert config.worklist is not None
    assert (config.worklist.filter_station_ae, config.worklist.filter_modality) == (False, True)


@pytest.mark.parametrize("key", ["filter_station_ae", "filter_modality"])
def test_worklist_filters_must_be_booleans(tmp_path: Path, key: str) -> None:
    problem = only_problem(tmp_path, PEER_SECTIONS["worklist"] + f'{key} = "no"\n' + DESTINATION)
    assert problem == f'agent.toml: [worklist] {key}: expected true or false, got "no"'
