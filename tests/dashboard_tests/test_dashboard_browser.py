"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, via selenium):
a real server process serves it while the callback trains on scikit-learn's digits. The job
list shows the running job, the job pages draw their charts (non-empty SVG), they follow the
job live, and the console stays free of errors (script errors, failed loads, CSP refusals).
Skipped, with the reason, where no browser can run (see autolrs.testing.browser)."""

from __future__ import annotations

import pytest

from autolrs.callbacks import AutoLRS
from autolrs.server.process import ServerProcess

from dashboard_testlib import SHOTS, DigitsLoop, get_json

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

JOB = "digits-live"
WAIT_S = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("dash") / "state", "--http-port", "0")
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def running(server, digits):
    """An AutoLRS job mid-training (its callback open: the job is active)."""
    loop = DigitsLoop(digits)
    cb = AutoLRS(loop.model, loop.optimizer, tuner="autolrs", server=server.endpoint, job=JOB, max_steps=400,
                 seed=0, config={"lr_min": 1e-3, "lr_max": 1.0, "tau": 40, "k": 3, "tau_max": 80})
    assert loop.train(cb, 160) == 160
    yield loop, cb
    cb.close()


def wait(driver, condition, what):
    # A live page redraws between finding an element and reading it: look again.
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, message=f"waiting for {what}")


def drawn(driver, chart_id: str) -> int:
    """How many data points the chart in ``#chart_id`` drew (0 when empty or not drawn yet)."""
    svgs = driver.find_elements(By.CSS_SELECTOR, f"#{chart_id} svg")
    return int(svgs[0].get_attribute("data-drawn") or 0) if svgs else 0


def test_the_job_list_shows_the_running_job(browser, server, running):
    browser.console_errors()  # start clean
    d = browser.driver
    d.get(server.dashboard_url)
    row = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-job="{JOB}"]'), "the job's row")[0]
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == JOB and cells[1] == "autolrs" and cells[2] == "active"
    listed = get_json(server.dashboard_url + "api/jobs")["jobs"][0]
    assert cells[4] == str(listed["step"]) and float(cells[5]) == pytest.approx(listed["lr"], rel=1e-3)
    assert cells[8] == f"{listed['search_steps']} / {listed['train_steps']}"
    browser.screenshot(SHOTS / "dashboard-list.png", full_page=False)
    row.find_element(By.TAG_NAME, "a").click()
    wait(d, lambda d: d.current_url.endswith(f"/jobs/{JOB}"), "the job page")
    assert browser.console_errors() == []


def test_the_job_page_draws_its_charts(browser, server, running):
    browser.console_errors()
    d = browser.driver
    d.get(f"{server.dashboard_url}jobs/{JOB}")
    wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered-at"), "the first render")
    for chart in ("chart-lr", "chart-loss", "chart-windows", "chart-forecasts"):
        assert drawn(d, chart) > 0, chart
        assert d.find_elements(By.CSS_SELECTOR, f"#{chart} svg path, #{chart} svg circle"), chart
    stages = d.find_elements(By.CSS_SELECTOR, "#stages-table tbody tr")
    assert len(stages) >= 2  # stage 1 and 2 done, stage 3 searching
    assert d.find_element(By.ID, "autolrs").is_displayed()
    assert not d.find_element(By.ID, "range").is_displayed()  # no range-test view for this tuner
    decisions = d.find_elements(By.CSS_SELECTOR, "#decisions-table tbody tr")
    assert len(decisions) >= 5 and "report" in decisions[0].text
    # The trial chart draws one window per trial of the latest stage, plus its forecast markers.
    legend = d.find_element(By.ID, "chart-windows").text
    assert "#1 LR" in legend and "#3 LR" in legend
    browser.screenshot(SHOTS / "dashboard-job.png")
    assert browser.console_errors() == []


def test_the_job_page_follows_the_job_live(browser, server, running):
    loop, cb = running
    browser.console_errors()
    d = browser.driver
    d.set_window_size(1400, 1000)
    d.get(f"{server.dashboard_url}jobs/{JOB}")
    wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered-at"), "the first render")
    rows_before = len(d.find_elements(By.CSS_SELECTOR, "#decisions-table tbody tr"))
    loop.train(cb, 60)
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#decisions-table tbody tr")) > rows_before,
         "new decisions on the page")
    cb.close()
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "#facts .badge").text == "finished", "the finished status")
    assert browser.console_errors() == []


def test_range_test_loss_diff_hypergradient_and_auto_pages(browser, server, digits):
    """One real job per tuner view: each page draws its own chart and its table."""
    jobs = {"digits-range": ("range_test", {"start_lr": 1e-4, "end_lr": 10, "num_iter": 60}, 60),
            "digits-lossdiff": ("loss_diff", {"lr_min": 1e-3, "lr_max": 3.0, "num_evals": 8, "num_subsamples": 5}, 60),
            "digits-hd": ("hd", {"every": 5, "beta": 1e-3}, 60),
            "digits-auto": ("auto", {}, 600)}
    for job, (tuner, config, steps) in jobs.items():
        loop = DigitsLoop(digits, lr=0.01)
        with AutoLRS(loop.model, loop.optimizer, tuner=tuner, config=config, server=server.endpoint, job=job,
                     probe_fn=loop.probe_loss if tuner == "loss_diff" else None, max_steps=steps) as cb:
            loop.train(cb, steps)
    browser.console_errors()
    d = browser.driver
    views = {"digits-range": ("range", "chart-range", "#suggestions-table tbody tr"),
             "digits-lossdiff": ("lossdiff", "chart-lossdiff", "#best-table tbody tr"),
             "digits-hd": ("hypergrad", "chart-hypergrad", None),
             "digits-auto": ("auto", "chart-auto-trials", None)}
    for job, (section, chart, table) in views.items():
        d.get(f"{server.dashboard_url}jobs/{job}")
        wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered-at"), f"{job}'s page")
        assert d.find_element(By.ID, section).is_displayed(), job
        assert drawn(d, chart) > 0 and drawn(d, "chart-lr") > 0, job
        if table:
            rows = d.find_elements(By.CSS_SELECTOR, table)
            assert rows and all(r.find_elements(By.CSS_SELECTOR, "td.num")[0].text not in ("", "-") for r in rows[:1])
    assert drawn(d, "chart-auto-sweep") > 0 and "centre" in d.find_element(By.ID, "chart-auto-sweep").text
    # The range test's three suggestions are drawn as labelled rules on its chart.
    d.get(f"{server.dashboard_url}jobs/digits-range")
    wait(d, lambda d: drawn(d, "chart-range") > 0, "the range-test chart")
    labels = d.find_element(By.ID, "chart-range").text
    assert "steepest" in labels and "valley" in labels and "minimum" in labels
    browser.screenshot(SHOTS / "dashboard-range-test.png")
    assert browser.console_errors() == []
