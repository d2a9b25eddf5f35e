"""Where the settings come from, relative paths in files, and errors that list valid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_node import __main__ as edge_main
from edge_node.config import load_config
from schemas.settings import SettingsError, find_settings

ENV = "EDGE_NODE_CONFIG"


def _file(folder: Path, name: str = "node.toml", text: str = '[node]\nid = "p"\n') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_explicit_wins_over_variable_and_system_file(tmp_path: Path) -> None:
    explicit, named, system = (_file(tmp_path / d) for d in ("a", "b", "c"))
    found = find_settings(explicit, {ENV: str(named)}, ENV, system)
    assert (found.path, found.how) == (explicit, f"--config {explicit}")
    assert find_settings(None, {ENV: str(named)}, ENV, system).path == named
    assert find_settings(None, {}, ENV, system).path == system


def test_no_file_anywhere_says_what_was_tried(tmp_path: Path) -> None:
    found = find_settings(None, {}, ENV, tmp_path / "none.toml")
    assert found.path is None
    assert found.how == (
        f"no settings file: tried --config (not given), {ENV} (not set), {tmp_path / 'none.toml'}"
    )


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^--config x\.toml: no such file \(relative to "):
        find_settings(Path("x.toml"), {}, ENV, tmp_path / "none.toml")
    with pytest.raises(SettingsError, match=rf"^{ENV}=/nowhere\.toml: no such file$"):
        find_settings(None, {ENV: "/nowhere.toml"}, ENV, tmp_path / "none.toml")


def test_relative_paths_in_a_file_follow_the_file_not_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '[node]\nid = "p"\ndata_dir = "state"\n[source]\nkind = "csv"\npaths = ["a.csv"]\n'
    path = _file(tmp_path / "etc", text=text)
    monkeypatch.chdir(tmp_path)
    config = load_config(path, {"EDGE_NODE__MODEL__INITIAL": "models/m1"})
    assert config.data_dir == tmp_path / "etc" / "state"
    assert config.source.paths == [str(tmp_path / "etc" / "a.csv")]
    # An environment override is a shell's: relative to the current folder.
    assert config.model.initial == "models/m1"


def test_an_unknown_choice_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _file(tmp_path, text='[node]\nid = "p"\n[source]\nkind = "modbuss"\n')
    with pytest.raises(
        SettingsError, match=r"key source\.kind: 'modbuss' is not one of csv, sim, "
    ):
        load_config(path, {})


def test_edge_node_run_without_settings_says_what_it_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(edge_main, "SYSTEM_CONFIG", tmp_path / "node.toml")
    for var in (ENV, "EDGE_NODE__NODE__ID"):
        monkeypatch.delenv(var, raising=False)
    assert edge_main.main(["run", "--log-level", "error"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-node run: no settings file: tried --config (not given), ")
    assert f"{tmp_path / 'node.toml'}; and EDGE_NODE__NODE__ID is not set" in err
