"""A real ``mlflow ui`` driven by Debian's headless Chromium (through selenium and Debian's chromedriver), for tests
that look at runs the way a newcomer does in the browser.

The MLflow UI (3.17) is a React single-page app: every check waits for the element it reads (WebDriverWait), never
for a fixed time. The helpers read the runs table by its ag-grid rows (``row-id`` is the run's id, the run name is
the link in the pinned ``Run Name`` column) and show metric columns through the table's own ``Columns`` menu, as a
user would: the table shows no metric column until one is ticked there.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's chromium, chromium-driver
APT_INSTALL = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]
WAIT = 60  # seconds any one element may take to appear (the SPA's first load on 2 busy cores takes several)


def chromium_or_reason(timeout: int = 900) -> tuple[Path, Path] | str:
    """Debian's Chromium and its chromedriver, installed with apt-get when missing and this process may (root,
    apt-get present; ``apt-get update`` first when the package lists do not know them); else why not."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return CHROMIUM, CHROMEDRIVER
    missing = " and ".join(str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file())
    command = " ".join(APT_INSTALL)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{missing} not found, and installing Debian's packages needs root and apt-get: run `{command}`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = ""
    for update_first in (False, True):
        try:
            if update_first:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout // 3)
            done = subprocess.run(APT_INSTALL, env=env, capture_output=True, text=True, timeout=timeout // 3)
        except subprocess.TimeoutExpired:
            return f"{missing} not found, and `{command}` did not finish in {timeout // 3} s"
        output = done.stdout + done.stderr
        if done.returncode == 0 and CHROMIUM.is_file() and CHROMEDRIVER.is_file():
            return CHROMIUM, CHROMEDRIVER
    return f"{missing} not found, and `{command}` failed, also after `apt-get update`:\n{output[-2000:]}"


def chromium() -> tuple[Path, Path]:
    """For a fixture: (chromium, chromedriver), or the test skipped saying why (no selenium, no Chromium)."""
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
    found = chromium_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@contextlib.contextmanager
def mlflow_ui(command: list[str], cwd: Path, base: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """Run ``command`` (an ``mlflow ui``) in its own process group until it answers on ``base``/health; stopped,
    with everything it started, on leaving."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            with (
                contextlib.suppress(OSError, http.client.HTTPException),
                urllib.request.urlopen(f"{base}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    break
            assert process.poll() is None, f"{' '.join(command)} exited ({process.returncode}); see {log}"
            assert time.monotonic() < deadline, f"{' '.join(command)} did not answer on {base}; see {log}"
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def browser(binary: Path, driver: Path, log: Path):
    """A headless Chromium (fresh profile: the UI's defaults, nothing remembered) on a wide window, so that the
    runs table renders all the columns a test shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=3000,1200"):
        options.add_argument(argument)  # --no-sandbox: Chromium refuses to run as root with its sandbox
    # an explicit driver path: selenium does not run Selenium Manager, which would try to download one
    chrome = webdriver.Chrome(service=Service(str(driver), log_output=str(log)), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait(chrome, condition, what: str, timeout: float = WAIT):
    """``condition(chrome)``'s first truthy value, polled until ``timeout``; else the test fails saying ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(chrome, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        body = chrome.execute_script("return document.body ? document.body.innerText : ''")
        pytest.fail(f"{what}: not shown within {timeout} s at {chrome.current_url}; the page read:\n{body[:3000]}")


ROW_NAMES = """
const names = {};
for (const row of document.querySelectorAll('.ag-pinned-left-cols-container [role=row][row-id]')) {
  const link = row.querySelector('a');
  if (link) names[row.getAttribute('row-id')] = link.textContent.trim();
}
return names;
"""


def table_run_names(chrome) -> dict[str, str]:
    """The runs table's rows now rendered: {run id: run name as shown}."""
    return chrome.execute_script(ROW_NAMES)


def show_child_rows(chrome, parent_id: str, child_ids: set[str]) -> dict[str, str]:
    """The parent's row expanded (the table nests child runs under their parent, collapsed until its button is
    clicked; the UI remembers rows expanded) until every child in ``child_ids`` is shown; returns the rows then."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    expander = f".ag-pinned-left-cols-container [row-id='{parent_id}'] button"
    clicked = [-10.0]  # when last: the rows may still be rendering; click again if they have not come 5 s later

    def expanded(chrome) -> dict[str, str] | None:
        names = table_run_names(chrome)
        if child_ids <= names.keys():
            return names
        if parent_id in names and time.monotonic() > clicked[0] + 5:
            with contextlib.suppress(WebDriverException):  # re-rendered between finding and clicking
                chrome.find_element(By.CSS_SELECTOR, expander).click()
                clicked[0] = time.monotonic()
        return None

    return wait(chrome, expanded, f"the child runs {sorted(child_ids)} under run {parent_id}")


def open_page(chrome, address: str) -> None:
    """Load ``address`` afresh, as from a link clicked elsewhere: another hash of the same single-page app would
    only re-route the page already there, showing its rows until the new ones come."""
    chrome.get("about:blank")
    chrome.get(address)


COLUMN_CHECKBOX = """
const [group, name] = arguments; let current = null;
for (const node of document.querySelectorAll('[role=dialog] .du-bois-light-tree-treenode')) {
  const title = node.querySelector('.du-bois-light-tree-title');
  if (!title) continue;
  const text = title.textContent.trim();
  if (!node.querySelector('.du-bois-light-tree-switcher-noop')) {  // a group: "Metrics (39)", "Tags (21)", ...
    current = text.replace(/ \\(\\d+\\)$/, '');
    continue;
  }
  if (current === group && text === name) return node.querySelector('.du-bois-light-tree-checkbox');
}
return null;
"""


def show_metric_columns(chrome, metrics: list[str]) -> None:
    """Tick each metric in the runs table's ``Columns`` menu (under Metrics, not the tags of the same name) and
    wait for its column's header."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chrome.find_element(By.CSS_SELECTOR, "[data-testid=column-selection-dropdown]").click()
    search = wait(chrome, lambda c: c.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']"), "Columns")
    for metric in metrics:
        search[0].send_keys(Keys.CONTROL, "a")
        search[0].send_keys(metric)
        checkbox = wait(chrome, lambda c, m=metric: c.execute_script(COLUMN_CHECKBOX, "Metrics", m), f"{metric} there")
        checkbox.click()
    search[0].send_keys(Keys.ESCAPE)
    for metric in metrics:
        header = f"[role=columnheader][col-id='{metric_column(metric)}']"
        wait(chrome, lambda c, h=header: c.find_elements(By.CSS_SELECTOR, h), f"the column {metric}")


def metric_column(metric: str) -> str:
    return f"metrics.`{metric}`"


CELLS = """
const cells = {};
for (const row of document.querySelectorAll('.ag-center-cols-container [role=row][row-id]')) {
  const values = {};
  for (const cell of row.querySelectorAll('[role=gridcell][col-id]')) {
    values[cell.getAttribute('col-id')] = cell.innerText.trim();
  }
  cells[row.getAttribute('row-id')] = values;
}
return cells;
"""


def table_cells(chrome) -> dict[str, dict[str, str]]:
    """The runs table's cells now rendered: {run id: {column id: text}} (metric columns: ``metric_column``)."""
    return chrome.execute_script(CELLS)


TABLES = """
const texts = cells => Array.from(cells).map(cell => cell.innerText.trim());
return Array.from(document.querySelectorAll('table')).map(
  table => Array.from(table.querySelectorAll('tr')).map(tr => texts(tr.querySelectorAll('th, td'))));
"""


def page_tables(chrome) -> list[list[list[str]]]:
    """Every HTML table on the page (a Markdown description's tables among them): rows of cell texts."""
    return chrome.execute_script(TABLES)


def click_text(chrome, text: str) -> bool:
    """Click the first element whose own text is ``text`` (e.g. "Show more"), if there is one."""
    from selenium.webdriver.common.by import By

    found = chrome.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
    if found:
        found[0].click()
    return bool(found)


def page_text(chrome) -> str:
    return chrome.execute_script("return document.body ? document.body.innerText : ''")


def shown_images(chrome) -> list[str]:
    """The sources of the page's images that loaded with a width."""
    return chrome.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)"
    )
