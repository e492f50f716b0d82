"""Shared fixtures: an offline session cache for tiny models, small synthetic data, helpers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """All tiny models are built once per test session into a private cache folder."""
    root = tmp_path_factory.mktemp("medfrag-cache")
    old = os.environ.get("MEDFRAG_CACHE")
    os.environ["MEDFRAG_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MEDFRAG_CACHE", None)
    else:
        os.environ["MEDFRAG_CACHE"] = old


@pytest.fixture(scope="session")
def synth_images():
    """Eight RGB images of the easy synthetic task."""
    from medfrag_probe.data.sources import open_source

    source = open_source("synth:brain-mri?n=8&size=48")
    return [source.image(i) for i in range(len(source))]


@pytest.fixture(autouse=True)
def loud_by_default():
    """`--quiet` in one CLI test must not silence the next test's status lines."""
    from medfrag_probe._log import set_quiet

    set_quiet(False)
    yield
    set_quiet(False)
