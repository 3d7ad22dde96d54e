"""The page GET / serves (defakenet/web/index.html) in a real headless Chromium, against a real Serve endpoint.

One Serve instance on the session's Ray runs two apps of the same small random-init DeFakeNet (32 px input, a model
directory): an open one at / and one with bearer auth at /auth. The page's verdict, p_fake, threshold and model must
equal what POST /v1/predict answers for the same bytes; a file that is not an image shows the server's message; the
auth app asks for a token until one is given. Screenshots of the done states go to test-artifacts/web/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image
from serving import serve_app

from defakenet.config import Config
from defakenet.data.synth import make_dataset

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SIZE = 32
TOKEN_ENV, TOKEN = "DEFAKENET_WEB_TEST_TOKEN", "w3b-s3cret"
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "web"
WAIT_S = 60
# the page's verdict colours (its CSS --fake, --real, --noface) as getComputedStyle reports them
COLOURS = {"fake": "rgb(198, 40, 40)", "real": "rgb(46, 125, 50)", "no-face": "rgb(117, 117, 117)"}


def _save_model(out, seed: int, threshold: float):
    import torch

    from defakenet.artifact import save_model
    from defakenet.model import DeFakeNet

    cfg = Config().replace(**{"data.image_size": SIZE})
    torch.manual_seed(seed)
    model = DeFakeNet(dropout=cfg.model.dropout, freeze_depth=cfg.model.freeze_depth)
    with torch.no_grad():  # random BN statistics: scores not saturated
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return save_model(out, model, cfg, {"threshold": threshold, "test_metrics": {"roc_auc": 0.5}})


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through its own chromedriver: Selenium Manager never downloads anything."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        why = f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    options = Options()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def endpoint(ray_session, tmp_path_factory):
    """Base URLs of the open app (/) and the auth app (/auth/), and the model directory's name."""
    from ray import serve

    from defakenet.serve import ServeArgs, make_app

    model_dir = _save_model(tmp_path_factory.mktemp("web") / "web-model", seed=3, threshold=0.5)
    with serve_app(ServeArgs(model=str(model_dir), poll_interval_s=0, auth_token_env="")) as url:
        # the replica reads the token from its own environment
        auth = ServeArgs(model=str(model_dir), poll_interval_s=0, auth_token_env=TOKEN_ENV)
        serve.run(make_app(auth, {TOKEN_ENV: TOKEN}), name="web-auth", route_prefix="/auth")
        yield {"open": url + "/", "auth": url + "/auth/", "predict": url + "/v1/predict", "name": model_dir.name}


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A real and a fake synthetic face under distinct names, and a text file named .png."""
    src = make_dataset(tmp_path_factory.mktemp("web-synth"), n=2, size=64, seed=7)
    out = tmp_path_factory.mktemp("web-uploads")
    files = {"real": out / "upload-real.png", "fake": out / "upload-fake.png", "bad": out / "notes.png"}
    shutil.copy(src / "real" / "00000.png", files["real"])
    shutil.copy(src / "fake" / "00000.png", files["fake"])
    files["bad"].write_text("these are my notes, not an image\n")
    return files


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).get_attribute("textContent").strip()


def _upload(driver, path: Path, want: str) -> None:
    """Send `path` through #file; wait until the page is in state `want` for that file."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("id", "file").send_keys(str(path))

    def settled(d):
        state = d.find_element("tag name", "body").get_attribute("data-state")
        return state == want and _text(d, "status").startswith(path.name)

    try:
        WebDriverWait(driver, WAIT_S).until(settled)
    except Exception as e:  # noqa: BLE001 - say what the page shows instead
        state = driver.find_element("tag name", "body").get_attribute("data-state")
        raise AssertionError(f"{path.name}: page never reached {want!r}: state {state!r}, "
                             f"status {_text(driver, 'status')!r}, error {_text(driver, 'error')!r}") from e


def _predict(endpoint, path: Path, token: str = "") -> dict:
    headers = {"Content-Type": "image/png", **({"Authorization": f"Bearer {token}"} if token else {})}
    r = requests.post(endpoint["predict"] if not token else endpoint["auth"] + "v1/predict",
                      data=path.read_bytes(), headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _assert_shows(driver, want: dict, model: str) -> None:
    """The page's verdict block equals the /v1/predict answer `want`."""
    assert _text(driver, "verdict") == want["label"]
    colour = driver.execute_script("return getComputedStyle(document.getElementById('verdict')).color")
    assert colour == COLOURS[want["label"]]
    assert _text(driver, "p-fake") == f"{want['p_fake']:.4f}"
    assert _text(driver, "threshold") == f"{want['threshold']:.4f}"
    assert _text(driver, "model") == model
    assert driver.find_element("id", "faces-card").is_displayed() == ("faces" in want)
    assert not driver.find_element("id", "error").is_displayed()


def _image_state(driver) -> dict:
    return driver.execute_script(
        "const i = document.getElementById('image');"
        "return {src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth};")


def _shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 0
    return path


def test_page_shows_the_endpoints_verdict(browser, endpoint, uploads):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(endpoint["open"])
    assert browser.find_element("tag name", "body").get_attribute("data-state") == "idle"
    WebDriverWait(browser, WAIT_S).until(lambda d: _text(d, "served").startswith("serving "))
    assert _text(browser, "served").startswith(f"serving {endpoint['name']} · input {SIZE} px · threshold 0.5000")

    for kind in ("real", "fake"):
        path = uploads[kind]
        _upload(browser, path, "done")
        _assert_shows(browser, _predict(endpoint, path), endpoint["name"])
        assert _image_state(browser)["src"].startswith("blob:")  # the original, from the file itself
        browser.find_element("id", "toggle").click()
        WebDriverWait(browser, WAIT_S).until(lambda d: _image_state(d)["complete"] and _image_state(d)["width"])
        shown = _image_state(browser)
        assert shown["src"].startswith("data:image/png;base64,")  # the overlay from /v1/explain
        assert shown["width"] == Image.open(path).width
        assert _text(browser, "toggle") == "Show original"
        _shot(browser, f"done-{kind}")

    r = requests.post(endpoint["predict"], data=uploads["bad"].read_bytes(), headers={"Content-Type": "image/png"},
                      timeout=60)
    assert r.status_code == 415
    _upload(browser, uploads["bad"], "error")
    assert r.json()["error"] in _text(browser, "error")
    assert browser.find_element("id", "error").is_displayed()
    assert not browser.find_element("id", "result").is_displayed()
    assert not browser.find_element("id", "image").is_displayed()  # no broken-image icon
    _shot(browser, "error-not-an-image")


def test_page_asks_for_the_token(browser, endpoint, uploads):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(endpoint["auth"])
    WebDriverWait(browser, WAIT_S).until(lambda d: "needs a bearer token" in _text(d, "served"))
    token = browser.find_element("id", "token")
    assert "needed" in token.get_attribute("class").split()
    assert _text(browser, "status") == "A token is needed: enter the bearer token above."
    _shot(browser, "needs-token")

    _upload(browser, uploads["fake"], "error")  # no token: the server's 401 message
    assert "missing or wrong bearer token" in _text(browser, "error")

    token.send_keys(TOKEN)
    WebDriverWait(browser, WAIT_S).until(lambda d: _text(d, "served").startswith("serving "))
    assert "needed" not in token.get_attribute("class").split()
    _upload(browser, uploads["fake"], "done")
    _assert_shows(browser, _predict(endpoint, uploads["fake"], token=TOKEN), endpoint["name"])
    _shot(browser, "done-with-token")
