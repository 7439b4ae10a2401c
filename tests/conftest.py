"""Shared test fixtures: the bundled real RGB-D sample, and no network access."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def hololens_path():
    from gasp_plugin.assets import HOLOLENS_SAMPLE, asset_path

    return asset_path(HOLOLENS_SAMPLE)


@pytest.fixture(scope="session")
def hololens_scene(hololens_path):
    from gasp_plugin.data import open_scene

    return open_scene(hololens_path)
