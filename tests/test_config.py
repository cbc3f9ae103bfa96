"""Presets, directories and the offline guard."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from satlib import config


def test_unknown_preset_is_one_clear_line():
    with pytest.raises(ValueError, match=r"unknown preset 'huge': use one of \['pythia', 'tiny'\]") as info:
        config.get_preset("huge")
    assert "\n" not in str(info.value)


def test_setup_tiny_is_offline_and_seeded():
    import numpy as np

    preset = config.setup("tiny", seed=3)
    first = np.random.rand()
    config.setup("tiny", seed=3)
    assert preset.offline and np.random.rand() == first
    assert config.network_blocked()


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
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(config.NetworkBlockedError, match="offline"):
        sock.connect(address)


def test_offline_guard_blocks_dns_and_reports_no_network():
    with pytest.raises(config.NetworkBlockedError, match=r"DNS lookup of .huggingface\.co. blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    assert config.network_available() is False


def test_offline_guard_allows_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_repository_url_is_one_setting(root):
    book_config = yaml.safe_load((root / "_config.yml").read_text())
    assert book_config["repository"]["url"] == config.REPOSITORY_URL
    for notebook in (root / "notebooks").glob("*.ipynb"):
        assert config.REPOSITORY_URL in notebook.read_text(), f"{notebook.name}: Colab cell has another URL"


def test_package_data_is_the_papers_values():
    packaged = Path(config.__file__).parent / "data_files" / "paper" / "table1_pythia160m_best_vs_final.csv"
    assert packaged.read_text().startswith("# Table 1 of Godey")
