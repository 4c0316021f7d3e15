"""The Snakemake report of a finished tiny run, looked at in real headless Chromium: the page
loads, and every ``report:`` item opens from the report's own menu with its image decoded."""

from __future__ import annotations

import os

import pytest
from PIL import Image
from report_browser import chromium, click_through
from workflow_helpers import clone, completed_run, snakemake

pytestmark = pytest.mark.slow

EXPECTED = {
    "results/train/samples/epoch_0001.png", "results/train/samples/epoch_0002.png",
    "results/train/losses.png", "results/export/preview.png", "results/evaluate/dice.png",
    "results/evaluate/metrics.csv", "results/evaluate/summary.md", "results/evaluate/worst.png",
}


@pytest.fixture(scope="module")
def browser_available():
    if chromium() is None:
        if os.environ.get("CARDIGAN_REQUIRE_CHROMIUM") == "1":
            pytest.fail("CARDIGAN_REQUIRE_CHROMIUM=1 but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")


def test_every_report_item_opens_in_chromium(browser_available, tmp_path_factory, tmp_path):
    work = clone(completed_run(tmp_path_factory.getbasetemp()), tmp_path / "run")
    snakemake(work, "--report", "report.html")
    found = click_through(work / "report.html", screenshot=tmp_path / "shot.png",
                          final="results/export/preview.png")
    assert found["errors"] == [] and found["categories"] == 3
    items = {item["path"]: item for item in found["items"]}
    assert set(items) == EXPECTED
    for path, item in items.items():
        if path.endswith(".png"):
            with Image.open(work / path) as png:  # the decoded image is the file's
                assert (item["width"], item["height"]) == png.size, path
            assert item["shown"] > 0, path
        else:
            assert item["href"].startswith("data:") and item["bytes"] > 100, path
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.size == (1400, 900)
        # the open preview fills the content pane with more than the page's background
        assert len(shot.convert("L").crop((380, 0, 1400, 900)).getcolors(1 << 16)) > 50
