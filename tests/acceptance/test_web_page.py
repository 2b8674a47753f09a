"""The web page in a real headless browser (Debian's chromium, driven by selenium through
chromium-driver) against the real `backupjobd serve` and the emulator: sign in with the
read-only token, the registered jobs render, a hostile entity name stays text, the console
stays clean, no request leaves the daemon, the content refreshes itself; screenshots are kept
in tests/artifacts/ (ignored by git).

Without chromium and chromium-driver the test skips and says so, unless
BACKUPJOBD_REQUIRE_TOOLS=1 (CI installs them: .ci/run), where it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Daemon, Emulator, free_port, wait_until

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FULL = "browser-full-token-0123456789"
READ = "browser-read-token-0123456789"
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">vm-evil'
REQUIRE_TOOLS = os.environ.get("BACKUPJOBD_REQUIRE_TOOLS") == "1"
WAIT_S = 15.0


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    missing = [
        name for name, path in (("chromium", browser), ("chromium-driver", driver)) if not path
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = (
            f"the browser test needs {' and '.join(missing)}"
            " (apt-get install chromium chromium-driver)"
        )
        if REQUIRE_TOOLS:
            pytest.fail(f"{reason} (BACKUPJOBD_REQUIRE_TOOLS=1)", pytrace=False)
        pytest.skip(reason)
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    binary, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _post(url: str, body: Any, token: str) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def _jobs(base: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {READ}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return list(json.loads(resp.read())["jobs"])
    except (urllib.error.URLError, ConnectionError):
        return []


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def _requested_urls(driver: Any, base: str) -> list[str]:
    """Every URL the daemon's pages asked for (the browser's own start page, loaded before
    the test navigates, is not the page under test)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            params = message["params"]
            if params.get("documentURL", "").startswith(f"{base}/"):
                urls.append(params["request"]["url"])
    return urls


def test_the_web_page_in_a_real_browser(emulator: Emulator, daemon: Daemon, browser: Any) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon.config_path.write_text(
        daemon.config_path.read_text() + f'\n[stuck]\nthresholds = {{ "Restore" = 1 }}\n'
        f"\n[api]\nenabled = true\nport = {port}\npage_refresh_seconds = 1\n"
    )
    daemon.env["BACKUPJOBD_API_TOKEN"] = FULL
    daemon.env["BACKUPJOBD_API_READ_TOKEN"] = READ
    daemon.start()
    created = emulator.create_jobs(
        [
            {"duration_seconds": 600, "entity_friendly_name": "vm-long"},
            {"duration_seconds": 600, "entity_friendly_name": HOSTILE},
            {"duration_seconds": 600, "entity_friendly_name": "vm-restore", "operation": "Restore"},
            {"duration_seconds": 1, "entity_friendly_name": "vm-broken", "final_status": "Failed"},
            {"duration_seconds": 1, "entity_friendly_name": "vm-done"},
        ]
    )
    wait_until("the API", lambda: _healthy(base), WAIT_S)
    assert _post(f"{base}/v1/jobs", [job["id"] for job in created], FULL) == 201

    def settled() -> bool:
        jobs = {j["entity_friendly_name"]: j for j in _jobs(base)}
        return (
            len(jobs) == 5
            and jobs["vm-broken"]["status"] == "Failed"
            and jobs["vm-done"]["status"] == "Completed"
            and jobs["vm-restore"]["stuck"]
        )

    wait_until("the jobs seen, two finished and one stuck", settled, 30)

    # The content is redrawn every second: an element found may be replaced before it is
    # read, and is then found again.
    wait = WebDriverWait(
        browser, WAIT_S, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    browser.get_log("performance")  # what the browser loaded before: its own start page
    browser.get(f"{base}/")
    wait.until(ec.presence_of_element_located((By.ID, "login")))
    assert "vm-long" not in browser.page_source  # nothing before signing in
    browser.find_element(By.ID, "token").send_keys(READ)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait.until(ec.presence_of_element_located((By.ID, "in-flight")))
    ARTIFACTS.mkdir(exist_ok=True)

    text = text_of(wait, By.ID, "in-flight")
    assert "vm-long" in text and "vm-restore" in text and "vm-broken" not in text
    assert HOSTILE in text  # shown as the text it is
    assert "stuck" in text_of(wait, By.CSS_SELECTOR, "#in-flight tr.stuck")
    assert browser.execute_script("return window.pwned") is None
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert "vm-broken" in text_of(wait, By.ID, "failures")
    assert "vm-done" in text_of(wait, By.ID, "finished")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")) == 5
    # A progress bar for each job in flight whose progress the daemon has read (a vault's
    # sweep lists jobs without it; a detail read brings it).
    with_progress = [
        j for j in _jobs(base) if not j["finished"] and j["progress_percent"] is not None
    ]
    bars = browser.find_elements(By.CSS_SELECTOR, "#in-flight progress")
    assert len(bars) == len(with_progress)
    browser.save_screenshot(str(ARTIFACTS / "web-page.png"))

    # The content refreshes itself (page_refresh_seconds = 1): the time it shows moves on.
    shown = text_of(wait, By.ID, "updated")
    wait.until(lambda d: d.find_element(By.ID, "updated").text != shown)
    assert HOSTILE in text_of(wait, By.ID, "in-flight")
    assert browser.execute_script("return window.pwned") is None

    click(wait, By.CSS_SELECTOR, "#failures a")  # vm-broken's own page
    wait.until(ec.presence_of_element_located((By.ID, "transitions")))
    assert "Failed" in text_of(wait, By.ID, "transitions")
    assert "vm-broken" in text_of(wait, By.TAG_NAME, "h1")
    [broken] = [j for j in _jobs(base) if j["entity_friendly_name"] == "vm-broken"]
    error = broken["error_details"][0]
    assert error["message"] in text_of(wait, By.ID, "job")
    browser.save_screenshot(str(ARTIFACTS / "web-job-page.png"))

    # A filter applies as soon as it is chosen (the page's script submits the form).
    click(wait, By.LINK_TEXT, "← all jobs")
    status_filter = wait.until(ec.presence_of_element_located((By.NAME, "status")))
    Select(status_filter).select_by_value("Failed")
    wait.until(ec.url_contains("status=Failed"))
    wait.until(ec.presence_of_element_located((By.ID, "in-flight")))
    assert "No job in flight." in text_of(wait, By.ID, "in-flight")
    assert "vm-broken" in text_of(wait, By.ID, "failures")
    assert "vm-done" not in text_of(wait, By.ID, "finished")

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    urls = _requested_urls(browser, base)
    for asset in ("/", "/ui/static/page.js", "/ui/static/page.css", "/ui/session"):
        assert f"{base}{asset}" in urls, urls
    assert browser.current_url.startswith(f"{base}/?")
    foreign = [u for u in urls if not u.startswith(f"{base}/")]
    assert foreign == [], f"requests that left the daemon: {foreign}"


def text_of(wait: Any, by: str, value: str) -> str:
    """An element's text, found again if a redraw replaced it meanwhile."""
    found: tuple[str] = wait.until(lambda d: (d.find_element(by, value).text,))
    return found[0]


def click(wait: Any, by: str, value: str) -> None:
    """Click an element, found again if a redraw replaced it meanwhile."""

    def clicked(d: Any) -> bool:
        d.find_element(by, value).click()
        return True

    wait.until(clicked)
