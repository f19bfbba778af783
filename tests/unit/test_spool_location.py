"""check_spool_location: a spool_dir that would make the agent chmod, clean or delete files it does
not own is refused before the agent starts (issue 13, finding 8). Today's check-config passes
every one of these configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.queue.spool import SPOOL_MARKER
from agent.spool_location import check_spool_location

DESTINATION = """
[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = 4242
called_ae = "PACS"
"""


def config_with(tmp_path: Path, spool: Path | str, extra: str = "") -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nspool_dir = "{spool}"\n{extra}' + DESTINATION, encoding="utf-8")
    return load_config(path)


def only_problem(config: AgentConfig) -> str:
    problems = check_spool_location(config)
    assert len(problems) == 1, problems
    assert "\n" not in problems[0]
    return problems[0]


# --- system folders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spool",
    ["/", "/etc", "/etc/", "/usr/../etc", "/usr", "/var", "/lib", "/lib64", "/home", "/root",
     "/tmp", "/opt", "/srv", "/mnt", "/media", "/dev", "/proc", "/sys", "/run", "/boot", "/bin",
     "/sbin"],
)
def test_root_and_system_folders_are_refused(tmp_path: Path, spool: str) -> None:
    problem = check_spool_location(config_with(tmp_path, spool))[0]
    assert problem.startswith(
        "agent.toml: [agent] spool_dir: expected a folder of its own, not / or a system folder"
    ), problem
    assert f'got "{Path(spool)}"' in problem


def test_a_symlink_cannot_hide_a_system_folder(tmp_path: Path) -> None:
    link = tmp_path / "spool"
    link.symlink_to("/etc")
    problems = check_spool_location(config_with(tmp_path, link))
    assert any("a system folder" in p and "(it is /etc)" in p for p in problems), problems


@pytest.mark.parametrize("spool", ["/var/lib/modality-agent/spool", "/srv/modality/spool"])
def test_a_folder_inside_a_system_folder_is_fine(tmp_path: Path, spool: str) -> None:
    if Path(spool).exists():
        pytest.skip(f"{spool} exists on this machine")
    assert check_spool_location(config_with(tmp_path, spool)) == []


# --- an existing folder must be empty or a spool -------------------------------------------


def test_new_or_empty_folder_is_fine(tmp_path: Path) -> None:
    assert check_spool_location(config_with(tmp_path, tmp_path / "new" / "spool")) == []
    (tmp_path / "empty").mkdir()
    assert check_spool_location(config_with(tmp_path, tmp_path / "empty")) == []


def test_non_empty_folder_without_a_marker_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "thesis.odt").write_bytes(b"years of work")
    (data / "photos").mkdir()

    problem = only_problem(config_with(tmp_path, data))

    assert problem == (
        "agent.toml: [agent] spool_dir: expected an empty folder or a modality-agent spool "
        f'(with {SPOOL_MARKER} or queue.db), got "{data}" (holds 2 entries, no spool marker)'
    )


@pytest.mark.parametrize("marker", [SPOOL_MARKER, "queue.db"])
def test_a_marked_spool_or_one_from_an_older_version_is_fine(tmp_path: Path, marker: str) -> None:
    spool = tmp_path / "spool"
    (spool / "objects").mkdir(parents=True)
    (spool / "objects" / "1.dcm").write_bytes(b"DICM")
    (spool / marker).write_bytes(b"")
    assert check_spool_location(config_with(tmp_path, spool)) == []


def test_a_marker_that_is_a_folder_does_not_count(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / SPOOL_MARKER).mkdir(parents=True)
    assert "no spool marker" in only_problem(config_with(tmp_path, spool))


def test_a_file_is_not_a_spool(tmp_path: Path) -> None:
    file = tmp_path / "spool"
    file.write_text("not a folder")
    problem = only_problem(config_with(tmp_path, file))
    assert problem.startswith("agent.toml: [agent] spool_dir: expected a folder, got ")
    assert problem.endswith("(a file)")


# --- the watch folder and import folders stay apart from the spool ---------------------------


@pytest.mark.parametrize(
    ("watch", "relation"),
    [("spool", "the spool itself"), ("spool/incoming", "inside the spool"),
     (".", "contains the spool")],
)
def test_watch_folder_overlapping_the_spool_is_refused(
    tmp_path: Path, watch: str, relation: str
) -> None:
    config = config_with(tmp_path, "spool", f'[watch_folder]\npath = "{watch}"\n')
    problem = only_problem(config)
    assert problem.startswith(
        "agent.toml: [watch_folder] path: expected a folder apart from the spool "
        f'([agent] spool_dir {tmp_path / "spool"}), got "{tmp_path / watch}"'
    ), problem
    assert problem.endswith(f"({relation})")


def test_a_symlink_cannot_hide_an_overlap(tmp_path: Path) -> None:
    (tmp_path / "spool" / "in").mkdir(parents=True)
    (tmp_path / "spool" / SPOOL_MARKER).write_bytes(b"")
    (tmp_path / "incoming").symlink_to(tmp_path / "spool" / "in")
    config = config_with(tmp_path, "spool", '[watch_folder]\npath = "incoming"\n')
    assert only_problem(config).endswith("(inside the spool)")

    # the spool itself reached through a link, the watch folder a plain folder around it
    (tmp_path / "real").mkdir()
    os.rename(tmp_path / "spool", tmp_path / "real" / "spool")
    (tmp_path / "spool-link").symlink_to(tmp_path / "real" / "spool")
    config = config_with(tmp_path, "spool-link", '[watch_folder]\npath = "real"\n')
    assert only_problem(config).endswith("(contains the spool)")


def test_a_sibling_watch_folder_is_fine(tmp_path: Path) -> None:
    # "spool-in" starts with "spool": compared by path components, not by string prefix
    config = config_with(tmp_path, "spool", '[watch_folder]\npath = "spool-in"\n')
    assert check_spool_location(config) == []


def test_import_folders_overlapping_the_spool_are_refused_by_number(tmp_path: Path) -> None:
    extra = '[api]\nimport_folders = ["usb", "spool/objects", "/"]\n'
    problems = check_spool_location(config_with(tmp_path, tmp_path / "spool", extra))
    assert problems == [
        "agent.toml: [api] import_folders: expected folders apart from the spool "
        f'([agent] spool_dir {tmp_path / "spool"}), got #2 "{tmp_path / "spool" / "objects"}" '
        "(inside the spool)",
        "agent.toml: [api] import_folders: expected folders apart from the spool "
        f'([agent] spool_dir {tmp_path / "spool"}), got #3 "/" (contains the spool)',
    ]


def test_watch_folder_inside_an_import_folder_is_fine(tmp_path: Path) -> None:
    extra = (
        '[api]\nimport_folders = ["exchange", "exchange/in"]\n'
        '[watch_folder]\npath = "exchange/in"\n'
    )
    assert check_spool_location(config_with(tmp_path, "spool", extra)) == []


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    extra = '[api]\nimport_folders = ["/"]\n[watch_folder]\npath = "/"\n'
    problems = check_spool_location(config_with(tmp_path, "/", extra))
    # "/" is refused as a system folder; that it is not empty would only repeat the point
    assert [p.split(": expected")[0] for p in problems] == [
        "agent.toml: [agent] spool_dir",
        "agent.toml: [watch_folder] path",
        "agent.toml: [api] import_folders",
    ]


# --- wiring: check-config runs it --------------------------------------------------------------


def test_preflight_reports_the_spool_location_problems(tmp_path: Path) -> None:
    from agent.daemon import preflight

    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("not ours")
    config = config_with(tmp_path, data, f'[watch_folder]\npath = "{data}/in"\n')
    expected = check_spool_location(config)
    assert len(expected) == 2
    assert set(expected) <= set(preflight(config))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_a_folder_this_user_cannot_list_is_reported_not_raised(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    (locked / "spool").mkdir(parents=True)
    locked.chmod(0o000)
    try:
        problem = only_problem(config_with(tmp_path, locked / "spool"))
    finally:
        locked.chmod(0o700)
    assert "expected a folder this user can list" in problem


def test_a_folder_that_cannot_be_looked_at_is_reported_not_raised(tmp_path: Path) -> None:
    # a name longer than NAME_MAX: stat() fails with ENAMETOOLONG, even for root
    problem = only_problem(config_with(tmp_path, tmp_path / ("x" * 300) / "spool"))
    assert "expected a folder this user can list" in problem
    assert problem.endswith("(File name too long)")
