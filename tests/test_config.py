"""The ground layer: presets, settings, directories, the offline guard, atomic writes and checksums."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from satlib import config, network, presets, storage
from satlib.errors import ConfigurationError, DamagedArtefactError


def test_unknown_preset_is_one_clear_line():
    with pytest.raises(ConfigurationError, match=r"unknown preset 'huge': use one of \['pythia', 'tiny'\]") as info:
        presets.get_preset("huge")
    assert "\n" not in str(info.value)


def test_setup_tiny_is_offline_and_seeded():
    preset = presets.setup("tiny", seed=3)
    first = np.random.rand()
    presets.setup("tiny", seed=3)
    assert preset.offline and np.random.rand() == first
    assert network.network_blocked()


@pytest.mark.parametrize("seed", ["x", -1, 1.5, True])
def test_bad_seed_is_one_line(seed):
    with pytest.raises(ConfigurationError, match="seed must be a non-negative integer") as info:
        presets.setup("tiny", seed=seed)
    assert "\n" not in str(info.value)


def test_presets_own_what_differs():
    tiny, pythia = presets.PRESETS["tiny"], presets.PRESETS["pythia"]
    assert tiny.suite_names() == ["tiny-d16", "tiny-d32", "tiny-d64", "tiny-d128"]
    assert tiny.model_names()[-1] == pythia.model_names()[-1] == presets.SMOLLM2
    assert len(tiny.checkpoints()) == 4 * len(tiny.suite.checkpoint_steps())
    assert pythia.checkpoints()[0] == ("pythia-14m", 1000) and len(pythia.checkpoints()) == 5 * 17
    assert len(pythia.published.checkpoint_steps()) == 154
    assert pythia.tokens_per_step() == 2_097_152 and tiny.tokens_per_step() == 16 * 128


def test_pythia_widths_match_the_papers_table():
    table = __import__("satlib.data", fromlist=["paper_values"]).paper_values("pythia_models")
    assert dict(presets.PYTHIA.widths) == dict(zip(table.model, table.d_model, strict=True))


def test_settings_replace_the_pythia_presets_choices():
    pythia = presets.with_settings(presets.PRESETS["pythia"], {"models": ["pythia-70m"], "steps": [1000, 2000],
                                                               "head_ranks": [8, 16], "pile_tokens": 600})  # fmt: skip
    assert pythia.checkpoints() == [("pythia-70m", 1000), ("pythia-70m", 2000)]
    assert pythia.head_experiments[0].ranks == (8, 16) and pythia.evaluation.tokens == 600
    assert pythia.mixture_experiments[0].backbone.ranks == (8, 16)  # the mixtures share the changed backbone
    assert presets.with_settings(presets.PRESETS["pythia"], {}) == presets.PRESETS["pythia"]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"modles": ["x"]}, r"unknown settings \['modles'\]"),
        ({"steps": [1.5]}, "steps must be a non-empty list of int"),
        ({"pile_tokens": "many"}, "pile_tokens must be of type int"),
        ([1], "SETTINGS must be a mapping"),
    ],
)
def test_bad_settings_are_one_line(settings, match):
    with pytest.raises(ConfigurationError, match=match) as info:
        presets.setup("pythia", settings=settings)
    assert "\n" not in str(info.value)


def test_settings_are_refused_offline():
    with pytest.raises(ConfigurationError, match="settings apply to the pythia preset only"):
        presets.setup("tiny", settings={"pile_tokens": 10})


def test_data_dir_setting_and_default(monkeypatch, tmp_path, root):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path))
    assert config.data_dir() == tmp_path.resolve()
    monkeypatch.delenv(config.DATA_DIR_ENV)
    shared = root.parent / "shared" / "data"
    if shared.is_dir():
        assert config.data_dir() == shared.resolve()
    else:
        assert config.data_dir() == config.cache_dir() / "data"


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv(config.CACHE_DIR_ENV, str(tmp_path / "c"))
    assert config.cache_dir() == (tmp_path / "c").resolve()


@pytest.mark.parametrize("address", [("8.8.8.8", 53), ("2001:4860:4860::8888", 53, 0, 0)])
def test_offline_guard_blocks_remote_connections(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(network.NetworkBlockedError, match="offline"):
        sock.connect(address)


def test_offline_guard_blocks_dns_and_reports_no_network():
    with pytest.raises(network.NetworkBlockedError, match=r"DNS lookup of .huggingface\.co. blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    assert network.network_available() is False
    with pytest.raises(network.OfflineError, match=r"needs huggingface\.co and there is no network: do X") as info:
        network.require_network("the thing", "do X")
    assert "\n" not in str(info.value)


def test_offline_guard_allows_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_repository_url_is_one_setting(root):
    book_config = yaml.safe_load((root / "_config.yml").read_text())
    assert book_config["repository"]["url"] == config.REPOSITORY_URL


def test_package_data_is_the_papers_values():
    packaged = Path(config.__file__).parent / "data_files" / "paper" / "table1_pythia160m_best_vs_final.csv"
    assert packaged.read_text().startswith("# Table 1 of Godey")


def test_directory_writes_record_checksums_and_detect_damage(tmp_path):
    folder = tmp_path / "artefact"
    storage.write_directory_atomically(folder, lambda t: (t / "a.bin").write_bytes(b"abc"))
    assert storage.damaged_files(folder) == [] and storage.directory_complete(folder)
    identity = storage.content_id(folder)
    storage.write_directory_atomically(tmp_path / "copy", lambda t: (t / "a.bin").write_bytes(b"abc"))
    assert storage.content_id(tmp_path / "copy") == identity  # named by content, not by path
    (folder / "a.bin").write_bytes(b"abd")
    assert storage.damaged_files(folder) == ["a.bin"]
    with pytest.raises(DamagedArtefactError, match=r"artefact is damaged \(a.bin fails its checksum\): rebuild it"):
        storage.verify_directory(folder, "rebuild it")
    assert not list(tmp_path.glob(".artefact.*"))  # no temporary folder left behind


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def fail(temporary: Path) -> None:
        (temporary / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        storage.write_directory_atomically(tmp_path / "artefact", fail)
    assert list(tmp_path.iterdir()) == []


def test_build_once_reads_a_read_only_cache_without_locks(tmp_path):
    target = tmp_path / "ready.txt"
    target.write_text("done")
    tmp_path.chmod(0o555)
    try:
        storage.build_once(target.is_file, lambda: pytest.fail("rebuilt"), tmp_path / ".lock")
    finally:
        tmp_path.chmod(0o755)
    assert not (tmp_path / ".lock").exists()


def test_damaged_json_names_its_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_text('{"value": 1')
    with pytest.raises(DamagedArtefactError, match=r"record.json is damaged \(JSONDecodeError\): remake it") as info:
        storage.read_json(path, "remake it")
    assert "\n" not in str(info.value)


def test_specs_refuse_bad_values():
    with pytest.raises(ConfigurationError, match="widths must be positive integers"):
        dataclasses.replace(presets.TINY_SUITE, widths=(0,))
    with pytest.raises(ConfigurationError, match="unknown head-experiment source"):
        dataclasses.replace(presets.TINY_HEADS, source="web")
