"""Watched-folder configuration: the default inbox, INSPECTOR_WATCH_* variables, the JSON file,
and errors that name what was wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inspector.errors import ConfigurationError
from inspector.settings import Settings
from inspector.sources.config import DEFAULT_PATTERNS, WatchFolder, load_watch_folders
from inspector.sources.folders import check_watch_folders


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"INSPECTOR_DATA_DIR": str(tmp_path / "data")})


def test_the_default_is_the_inbox_under_the_data_dir(settings: Settings, tmp_path: Path) -> None:
    [inbox] = load_watch_folders(settings, {})
    assert inbox.path == tmp_path / "data" / "inbox"
    assert inbox.create and not inbox.recursive and not inbox.polling
    assert (inbox.after, inbox.after_error, inbox.sidecar) == ("leave", "leave", False)
    assert (inbox.stability_seconds, inbox.rescan_seconds, inbox.poll_seconds) == (2.0, 60.0, 1.0)
    assert inbox.patterns == DEFAULT_PATTERNS
    assert check_watch_folders([inbox]) == {}  # created when watching starts


def test_environment_list_and_defaults(settings: Settings, tmp_path: Path) -> None:
    env = {
        "INSPECTOR_WATCH_DIRS": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]),
        "INSPECTOR_WATCH_STABILITY_SECONDS": "0.5",
        "INSPECTOR_WATCH_RESCAN_SECONDS": "30",
        "INSPECTOR_WATCH_POLLING": "yes",
        "INSPECTOR_WATCH_POLL_SECONDS": "2.5",
        "INSPECTOR_WATCH_AFTER": "delete",
        "INSPECTOR_WATCH_SIDECAR": "1",
        "INSPECTOR_WATCH_RECURSIVE": "true",
    }
    a, b = load_watch_folders(settings, env)
    assert (a.path, b.path) == (tmp_path / "a", tmp_path / "b")
    assert not a.create
    assert (a.stability_seconds, a.rescan_seconds, a.poll_seconds) == (0.5, 30.0, 2.5)
    assert a.polling and a.sidecar and a.recursive
    # Deleting after inspection keeps failed files to look at.
    assert (a.after, a.after_error) == ("delete", "move")
    assert check_watch_folders([a, b]) == {
        str(tmp_path / "a"): "does not exist",
        str(tmp_path / "b"): "does not exist",
    }


def test_json_file_with_defaults_aliases_and_relative_paths(
    settings: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "conf" / "watch.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                "defaults": {"stability_seconds": 1, "after": "move", "sidecar": True},
                "folders": [
                    {
                        "path": "line1/cam2",
                        "recursive": True,
                        "patterns": ["*.BMP"],
                        "line": "L1",
                        "camera": "cam2",
                        "product": "P-100",
                        "model": "demo",
                        "priority": 5,
                    },
                    {"path": "/srv/share", "polling": True, "after": "leave"},
                    "/srv/plain",
                ],
            }
        )
    )
    env = {"INSPECTOR_WATCH_CONFIG": str(config), "INSPECTOR_WATCH_STABILITY_SECONDS": "9"}
    first, share, plain = load_watch_folders(settings, env)
    assert first.path == tmp_path / "conf" / "line1" / "cam2"
    assert (first.line, first.camera, first.lot, first.model_name) == (
        "L1",
        "cam2",
        "P-100",
        "demo",
    )
    assert first.priority == 5 and first.recursive and first.sidecar
    assert first.stability_seconds == 1.0  # the file's defaults beat the environment
    assert (first.after, first.after_error) == ("move", "move")
    assert first.wants("frame.bmp") and first.wants("FRAME.BMP") and not first.wants("a.png")
    assert share.polling and (share.after, share.after_error) == ("leave", "leave")
    assert plain.path == Path("/srv/plain") and plain.after == "move"


def test_a_list_of_folders_is_a_valid_file_too(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "watch.json"
    config.write_text(json.dumps(["/srv/a", {"path": "/srv/b", "lot": "x"}]))
    a, b = load_watch_folders(settings, {"INSPECTOR_WATCH_CONFIG": str(config)})
    assert (a.path, b.path, b.lot) == (Path("/srv/a"), Path("/srv/b"), "x")


def test_one_file_holds_folders_and_cameras(settings: Settings, tmp_path: Path) -> None:
    from inspector.sources.camera_config import load_cameras

    config = tmp_path / "watch.json"
    document = {
        "defaults": {"line": "L2"},
        "folders": [{"path": "/srv/drop"}],
        "camera_defaults": {"interval_seconds": 5},
        "cameras": [{"id": "cam-1", "source": "rtsp://10.0.0.7/stream"}],
    }
    config.write_text(json.dumps(document))
    env = {"INSPECTOR_WATCH_CONFIG": str(config)}
    [folder] = load_watch_folders(settings, env)
    [camera] = load_cameras(settings, env)
    assert (folder.path, folder.line) == (Path("/srv/drop"), "L2")
    assert (camera.id, camera.line, camera.interval_seconds) == ("cam-1", "L2", 5)
    config.write_text(json.dumps({"cameras": document["cameras"]}))  # cameras only: no folders
    assert load_watch_folders(settings, env) == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"folders": [{"path": "/a", "recursiv": True}]}, "unknown key(s) 'recursiv'"),
        ({"folders": [{"path": "/a", "recursive": "yes"}]}, "recursive must be true or false"),
        ({"folders": [{"recursive": True}]}, "every folder needs a 'path'"),
        ({"folders": [{"path": "/a", "after": "archive"}]}, "after must be one of leave, move"),
        ({"folders": [{"path": "/a", "stability_seconds": -1}]}, "stability_seconds must be at"),
        ({"folders": [{"path": "/a", "line": "x" * 200}]}, "line must be 1 to 128 characters"),
        ({"folders": [{"path": "/a", "lot": "x", "product": "y"}]}, "given twice"),
        ({"folders": ["/a", "/a"]}, "configured twice"),
        (
            {"folders": [{"path": "/a", "recursive": True}, "/a/b"]},
            "lies inside /a, which is watched recursively",
        ),
        ({"folder": []}, "expected an object with 'folders'"),
    ],
)
def test_configuration_errors_name_what_is_wrong(
    settings: Settings, tmp_path: Path, document: object, message: str
) -> None:
    config = tmp_path / "watch.json"
    config.write_text(json.dumps(document))
    with pytest.raises(ConfigurationError) as info:
        load_watch_folders(settings, {"INSPECTOR_WATCH_CONFIG": str(config)})
    assert message in str(info.value)


def test_unreadable_configuration(settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigurationError, match=r"INSPECTOR_WATCH_CONFIG names .*nope\.json"):
        load_watch_folders(settings, {"INSPECTOR_WATCH_CONFIG": str(missing)})
    broken = tmp_path / "broken.json"
    broken.write_text("{folders: [")
    with pytest.raises(ConfigurationError, match=r"broken\.json is not valid JSON"):
        load_watch_folders(settings, {"INSPECTOR_WATCH_CONFIG": str(broken)})
    with pytest.raises(ConfigurationError, match="INSPECTOR_WATCH_POLLING must be true or false"):
        load_watch_folders(settings, {"INSPECTOR_WATCH_POLLING": "maybe"})
    with pytest.raises(ConfigurationError, match="INSPECTOR_WATCH_STABILITY_SECONDS must be a"):
        load_watch_folders(settings, {"INSPECTOR_WATCH_STABILITY_SECONDS": "soon"})


def test_which_names_are_taken(tmp_path: Path) -> None:
    folder = WatchFolder(path=tmp_path)
    assert folder.wants("a.png") and folder.wants("B.JPG") and folder.wants("c.tiff")
    for name in ("a.png.part", "a.png.tmp", ".a.png", "a.png~", "a.txt", "A.PNG.TMP"):
        assert not folder.wants(name), name
    everything = WatchFolder(path=tmp_path, patterns=("*",), sidecar=True)
    assert everything.wants("a.raw") and not everything.wants("a.raw.json")  # our sidecars


def test_folder_problems_name_the_reason(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    problems = check_watch_folders(
        [
            WatchFolder(path=tmp_path),
            WatchFolder(path=tmp_path / "missing"),
            WatchFolder(path=a_file),
            WatchFolder(path=a_file / "below"),
        ]
    )
    assert problems == {
        str(tmp_path / "missing"): "does not exist",
        str(a_file): "is not a folder",
        str(a_file / "below"): "cannot be reached (Not a directory)",
    }
