"""examples/space/app.py in a real browser: the app starts with its one command on 127.0.0.1,
headless Chromium (driven by selenium) uploads a picture and reads the rankings, the attributes
and the evidence off the page, saves a screenshot (SCEGG_APP_SCREENSHOT names where; default the
test's tmp folder), then uploads a corrupt file: the page says why, and the app keeps serving.

The handlers behind the page (adding a class, bad class tables) are tested without the browser.
Skips only where Chromium or its driver is not installed; CI (.ci/run) installs both and sets
SCEGG_REQUIRE_BROWSER=1, which turns that skip into a failure."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, tiny_image_processor, tiny_resnet
from hub_server import HubStandIn, hub_endpoint, hub_server, run_client  # noqa: F401 - fixtures are used by name
from PIL import Image
from test_export import region_model

from modeling_scegg.export import attach_backbone, save_model

APP = REPO_ROOT / "examples" / "space" / "app.py"
ATTRIBUTES = ["has_bill_shape::curved", "has_wing_color::blue", "has_crest", "has_long_tail", "has_eye_ring",
              "has_webbed_feet", "has_spotted_belly"]
CLASSES = ["sparrow", "blue_jay", "crow", "heron", "kingfisher", "gull"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2300",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]  # nothing but the app resolves


@pytest.fixture(scope="module")
def app_model(tmp_path_factory) -> Path:
    """A tiny pictures model with bird-like names, a non-uniform attention and refit statistics."""
    model = region_model(attribute_names=ATTRIBUTES, id2label=dict(enumerate(CLASSES)))
    with torch.no_grad():
        model.scen.local_embedding.attention_weight.normal_(generator=torch.Generator().manual_seed(3))
    model.record_refit_data(torch.rand(40, 12), torch.tensor([0, 2, 3, 5] * 10), num_synthetic=8, epochs=[2, 2],
                            lr=1e-2)
    image_model = attach_backbone(model, tiny_resnet(), tiny_image_processor())
    return save_model(image_model, tmp_path_factory.mktemp("app") / "model", tiny_image_processor())


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(folder / "bird.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return {"good": folder / "bird.jpg", "broken": folder / "broken.jpg"}


def _import_app():
    sys.path.insert(0, str(APP.parent))
    try:
        import app
    finally:
        sys.path.remove(str(APP.parent))
    return app


# -- the handlers ---------------------------------------------------------------------------------
def test_an_added_class_is_ranked_at_once_and_bad_tables_are_explained(app_model, pictures, tmp_path):
    app = _import_app()
    demo = app.Demo(app.load_pipeline(str(app_model)), "tiny")
    shown = demo.classify(str(pictures["good"]), 3, 4, [], None)
    assert set(shown[0]) <= set(CLASSES) and set(shown[1]) <= {"blue_jay", "kingfisher"}
    assert [row[0] for row in shown[2]] and {row[0] for row in shown[2]} <= set(ATTRIBUTES)
    rows = app.attribute_table(demo.pipe)
    rows[1][1], rows[2][1] = 1.0, 0.5
    added = demo.add("robin", rows, None, str(pictures["good"]), 3, 4, ["has_crest"], None)
    session, status = added[0], added[-2].replace("*", "")
    assert session.model.config.num_classes == 7 and demo.pipe.model.config.num_classes == 6
    assert "Added robin" in status and "of 7 (GZSL)" in status and "of 3 (CZSL)" in status
    assert [caption for _, caption in added[5]] == ["the crop the model saw", "attention: has_crest"]
    assert "7 classes" in added[-1]
    csv = tmp_path / "more.csv"
    csv.write_text("class_name," + ",".join(ATTRIBUTES) + "\nowl,1,0,0,0,1,0,0\nswan,0,0,0,1,0,1,0\n")
    more = demo.add("", rows, str(csv), str(pictures["good"]), 3, 4, [], session)
    assert more[0].model.config.num_classes == 9 and "Added owl, swan" in more[-2].replace("*", "")
    assert "Give the new class a name" in demo.add(" ", rows, None, None, 3, 4, [], None)[-2]
    csv.write_text("class_name,has_crest\nowl,1\n")
    assert "the model's 7 attribute columns, got 1" in demo.add("", rows, str(csv), None, 3, 4, [], None)[-2]
    assert "all-zero" in demo.add("nothing", app.attribute_table(demo.pipe), None, None, 3, 4, [], None)[-2]


def test_a_model_that_cannot_read_pictures_is_refused_at_start(tmp_path):
    app = _import_app()
    region_model().save_pretrained(tmp_path / "features_only")
    with pytest.raises(SystemExit, match="no region backbone.*scegg attach-backbone"):
        app.load_pipeline(str(tmp_path / "features_only"))


SPACE = """
import sys
sys.path.insert(0, {app_dir!r})
import app
try:
    app.load_pipeline("alice/sc-egg-demo")
except SystemExit as refusal:
    print("REFUSED", refusal)
demo = app.Demo(app.load_pipeline("alice/sc-egg-demo", trust_remote_code=True), "alice/sc-egg-demo")
print("MODULE", type(demo.pipe).__module__)
app.build_demo(demo.pipe, "alice/sc-egg-demo")
rows = app.attribute_table(demo.pipe)
rows[0][1] = 1.0
print("STATUS", demo.add("robin", rows, None, {picture!r}, 3, 4, [], None)[-2])
"""


def test_on_a_space_the_hub_model_runs_its_own_code_when_trusted(hub_endpoint, app_model, pictures, tmp_path):
    """A Space without the scegg package: a Hub id loads only with trust_remote_code, then the
    model folder's own code ranks, explains and adds classes; nothing but the Hub stand-in is
    contacted (the client's network guard fails the test otherwise), gradio imported included."""
    hub_endpoint.add_files("model", "alice/sc-egg-demo", {p.name: p.read_bytes() for p in app_model.iterdir()})
    code = SPACE.format(app_dir=str(APP.parent), picture=str(pictures["good"]))
    result = run_client(code, hub_endpoint.endpoint, tmp_path / "space", name="space", with_package=False)
    assert "REFUSED the scegg package is not installed" in result.stdout and "--trust_remote_code" in result.stdout
    assert "MODULE transformers_modules" in result.stdout
    assert "Added** robin. robin ranks #" in result.stdout, result.stdout[-2000:]


# -- the browser ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running_app(app_model):
    """`python examples/space/app.py MODEL --port P` on 127.0.0.1, until the test ends."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, str(APP), str(app_model), "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail(f"the app exited ({server.returncode}): {server.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("the app did not answer within 60 s")
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("SCEGG_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield session
    session.quit()


def _wait_for(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _text(browser, css: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(element.text for element in browser.find_elements(By.CSS_SELECTOR, css))


def _upload(browser, path: Path) -> None:
    from selenium.webdriver.common.by import By

    for clear in browser.find_elements(By.CSS_SELECTOR, "#picture button[aria-label='Clear']"):
        clear.click()
    field = _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#picture input[type='file']"), "the file input")
    field[0].send_keys(str(path))


def test_the_page_classifies_explains_and_survives_a_corrupt_upload(running_app, browser, pictures, tmp_path):
    url, server = running_app
    browser.get(url)
    _wait_for(lambda: "7 attributes" in _text(browser, "#model-info"), "the model description")
    _upload(browser, pictures["good"])
    _wait_for(lambda: "Classified bird.jpg: ranked among 6 classes" in _text(browser, "#status"), "the ranking")
    gzsl = _wait_for(lambda: _text(browser, "#gzsl"), "the GZSL ranking")
    assert sum(name in gzsl for name in CLASSES) >= 3, gzsl
    czsl = _text(browser, "#czsl")
    assert "blue_jay" in czsl and "kingfisher" in czsl and "sparrow" not in czsl, czsl
    seen = _wait_for(lambda: _text(browser, "#attributes"), "the attribute list")
    assert sum(name in seen for name in ATTRIBUTES) == 5, seen
    assert "supporting" in _text(browser, "#evidence") and "(+0." in _text(browser, "#evidence")
    from selenium.webdriver.common.by import By

    _wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#maps img")) >= 6, "the crop and 5 attention maps")
    screenshot = Path(os.environ.get("SCEGG_APP_SCREENSHOT", tmp_path / "app.png"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    _upload(browser, pictures["broken"])
    _wait_for(lambda: "Error: broken.jpg could not be read" in _text(browser, "#status"), "the error on the page")
    assert server.poll() is None, "the app must keep serving after a corrupt upload"
    _upload(browser, pictures["good"])
    _wait_for(lambda: "Classified bird.jpg: ranked among 6 classes" in _text(browser, "#status"), "a ranking after it")
    assert sum(name in _text(browser, "#gzsl") for name in CLASSES) >= 3

    csv = tmp_path / "owl.csv"
    csv.write_text("class_name," + ",".join(ATTRIBUTES) + "\nowl,1,0,0,0,1,0,0\n")
    browser.find_element(By.CSS_SELECTOR, "#add-classes button").click()
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#classes-csv input[type='file']"), "the CSV field")[0] \
        .send_keys(str(csv))
    _wait_for(lambda: "owl" in _text(browser, "#classes-csv"), "the CSV upload")  # shown as "owl" ".csv"
    browser.find_element(By.CSS_SELECTOR, "#add-class").click()
    status = _wait_for(lambda: "Added owl" in _text(browser, "#status") and _text(browser, "#status"), "the new class")
    assert "owl ranks #" in status and "of 7 (GZSL)" in status and "of 3 (CZSL)" in status, status
    assert "7 classes (4 seen in training, 3 unseen)" in _text(browser, "#model-info")
