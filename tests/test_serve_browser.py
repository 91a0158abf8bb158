"""The page in a real headless Chromium: upload a photo and a non-image, read what the page shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from abcd.core.params import load_params
from abcd.data.images import load_rgb
from abcd.inference.pipeline import classify
from abcd.serving.app import create_app
from abcd.serving.onnx_model import OnnxClassifier, OnnxRuntime
from tests.browser_utils import chromium, headless_chromium, live_server, upload_and_wait
from tests.conftest import CLASSES, REPO


@pytest.fixture
def browser() -> tuple[str, str]:
    """Requested first, so that a missing browser skips (or, with CI set, fails) before the export is built."""
    return chromium()


def test_missing_browser_skips_with_the_reason_but_fails_under_ci(monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set, so the browser is required"):
        chromium()


@pytest.mark.slow  # Debian's Chromium: not needed by the quick loop
def test_page_shows_the_class_of_a_photo_and_the_error_of_a_non_image(
    browser, exported, shared_photos, tmp_path: Path
) -> None:
    model = OnnxClassifier(exported["onnx"])
    # The original rule at threshold 0 never says unknown: the page must show a class name.
    limits = load_params(REPO / "params.yaml").serve
    app = create_app(model, limits, max_pixels=40_000_000, method="max_softmax", threshold=0.0)
    photo = sorted((shared_photos / "cats").iterdir())[0]
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    (found,) = classify(OnnxRuntime(model, model.detector("max_softmax", 0.0)), [load_rgb(photo)], 1)
    expected, probs = found.label, found.probs
    assert expected in CLASSES

    with live_server(app) as url, headless_chromium() as driver:
        good_card, bad_card = upload_and_wait(driver, url, [str(photo), str(bad)])
        assert good_card.get_attribute("data-filename") == photo.name
        assert good_card.get_attribute("data-prediction") == expected
        label = good_card.find_element("css selector", ".label").text
        assert label == f"{expected} {100 * probs.max():.1f}%"
        assert len(good_card.find_elements("css selector", ".bar")) == len(CLASSES)
        assert bad_card.get_attribute("data-filename") == "notes.jpg"
        assert "cannot decode" in bad_card.find_element("css selector", ".error").text
        assert driver.find_element("id", "status").text == "2 file(s) classified"
