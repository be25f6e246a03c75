"""The dashboard in a real headless Chromium (Debian's, driven by Playwright's Python
package): the list follows a running job live, the job's chart gains points without a
reload, filters work, cancel from the job page ends `cancelled`, a failed job shows its
exception and traceback. Screenshots of the list and of a job's page are written to
`test-artifacts/browser/` (gitignored; TRAINDEPOT_TEST_ARTIFACTS moves it)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from tests.integration.conftest import Stack
from tests.specs import tiny_spec

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = (
    Path(
        os.environ.get(
            "TRAINDEPOT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"
        )
    )
    / "browser"
)
WAIT_MS = 120_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("ready"),
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (scripts/test installs it with apt-get; "
        "it could not here)",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    # The key, as a user would have entered it once.
    context.add_init_script(
        f"localStorage.setItem('traindepot.key', {json.dumps(stack.admin_key)})"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == []


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_dashboard(page: Page, stack: Stack, job_id: str | None = None) -> None:
    page.goto(f"{stack.url}/dashboard" + (f"#job={job_id}" if job_id else ""))
    page.wait_for_selector("#live.on", timeout=WAIT_MS)  # the change stream is open
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads


def bar_width(page: Page, job_id: str) -> float:
    width: float = page.eval_on_selector(
        f'tr.job[data-id="{job_id}"] .bar > div', "e => parseFloat(e.style.width)"
    )
    return width


def test_running_job_live_in_the_list_and_its_chart_then_cancel(page: Page, stack: Stack) -> None:
    open_dashboard(page, stack)
    job = stack.submit(
        tiny_spec(name="browser-live", training_args={"max_steps": 3000, "save_strategy": "no"})
    )
    job_id = job["id"]
    try:
        row = f'tr.job[data-id="{job_id}"]'
        # The new job appears and runs, with no reload and no poll: the change stream.
        page.wait_for_selector(f'{row}[data-status="running"]', timeout=WAIT_MS)
        page.wait_for_function(
            "s => parseFloat(document.querySelector(s).style.width) > 0",
            arg=f"{row} .bar > div",
            timeout=WAIT_MS,
        )
        before = bar_width(page, job_id)
        page.wait_for_function(
            "([s, w]) => parseFloat(document.querySelector(s).style.width) > w",
            arg=[f"{row} .bar > div", before],
            timeout=WAIT_MS,
        )
        # The list starts right under the header: no empty band above it.
        header = page.locator("header").bounding_box()
        aside = page.locator("aside").bounding_box()
        assert header is not None and aside is not None
        assert header["height"] < 120 and abs(aside["y"] - (header["y"] + header["height"])) < 2
        screenshot(page, "list")

        # The job's page: its chart gains points as the job trains.
        page.click(row)
        page.wait_for_selector("#loss-chart", timeout=WAIT_MS)
        page.wait_for_function(
            "() => +document.querySelector('#loss-chart').dataset.points > 0", timeout=WAIT_MS
        )
        points = int(page.get_attribute("#loss-chart", "data-points") or 0)
        page.wait_for_function(
            "n => +document.querySelector('#loss-chart').dataset.points > n",
            arg=points,
            timeout=WAIT_MS,
        )
        # Axes with a scale, and a legend naming both series.
        legend = page.text_content("#loss-chart .legend") or ""
        assert "train loss" in legend and "eval loss" in legend
        assert page.locator("#loss-chart text").count() > 6  # tick labels and axis titles
        assert "learning rate" in (page.text_content("#lr-chart .legend") or "")
        assert page.inner_text("#eta").strip() != "-"  # a running job has an ETA
        screenshot(page, "job-running")

        # Cancel, confirmed in the dialog: the page follows the job to `cancelled`.
        dialogs: list[str] = []

        def accept(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        page.click("#cancel")
        page.wait_for_function(
            "() => document.querySelector('#job-status')?.textContent === 'cancelled'",
            timeout=WAIT_MS,
        )
        assert dialogs and "Cancel job" in dialogs[0]
        assert stack.wait(job_id)["status"] == "cancelled"
        assert page.inner_text("#eta").strip() == "-"  # no ETA for a job that ended
        page.wait_for_selector("#result", timeout=WAIT_MS)  # the partial TrainOutput
        page.wait_for_selector(f'{row}[data-status="cancelled"]', timeout=WAIT_MS)
        assert page.evaluate("window.__sameDocument") is True
    finally:
        stack.http.post(f"/jobs/{job_id}/cancel")
        stack.wait(job_id)


def test_filters(page: Page, stack: Stack) -> None:
    queue = "idle-browser"  # no worker: the jobs stay queued
    ids = [
        stack.submit(tiny_spec(name=name, queue=queue, tags=tags))["id"]
        for name, tags in [
            ("filter-alpha", {"team": "vision"}),
            ("filter-beta", {"team": "nlp"}),
            ("filter-gamma", {"team": "nlp", "exp": "g"}),
        ]
    ]
    try:
        open_dashboard(page, stack)

        def names() -> list[str]:
            texts = page.locator("tr.job td.name").all_inner_texts()
            return sorted(text.split("\n")[0] for text in texts)

        page.fill("#f-queue", queue)
        page.click("#filters button[type=submit]")
        page.wait_for_function("() => document.querySelectorAll('tr.job').length === 3")
        assert names() == ["filter-alpha", "filter-beta", "filter-gamma"]
        page.fill("#f-tag", "team=nlp")
        page.click("#filters button[type=submit]")
        page.wait_for_function("() => document.querySelectorAll('tr.job').length === 2")
        assert names() == ["filter-beta", "filter-gamma"]
        page.fill("#f-name", "GAMMA")
        page.click("#filters button[type=submit]")
        page.wait_for_function("() => document.querySelectorAll('tr.job').length === 1")
        assert names() == ["filter-gamma"]
        page.fill("#f-name", "")
        page.fill("#f-tag", "")
        page.select_option("#f-status", "running")
        page.wait_for_selector("#empty:not([hidden])")
        assert names() == []
        page.select_option("#f-status", "queued")
        page.wait_for_function("() => document.querySelectorAll('tr.job').length === 3")
        # A job submitted now that matches the filters appears without a reload.
        ids.append(stack.submit(tiny_spec(name="filter-delta", queue=queue))["id"])
        page.wait_for_function("() => document.querySelectorAll('tr.job').length === 4")
        assert "filter-delta" in names()
        # Cancelled elsewhere: it leaves the `queued` filter live.
        assert stack.http.post(f"/jobs/{ids[0]}/cancel").status_code == 200
        page.wait_for_function("() => document.querySelectorAll('tr.job').length === 3")
        assert "filter-alpha" not in names()
        assert page.evaluate("window.__sameDocument") is True
    finally:
        for job_id in ids:
            stack.http.post(f"/jobs/{job_id}/cancel")


def test_a_failed_job_shows_its_exception_and_traceback(page: Page, stack: Stack) -> None:
    job = stack.submit(tiny_spec(name="browser-fails", dataset={"rows": [{"body": "hi"}] * 4}))
    assert stack.wait(job["id"])["status"] == "failed"
    open_dashboard(page, stack, job["id"])
    page.wait_for_selector("#error-type", timeout=WAIT_MS)
    assert "DataError" in page.inner_text("#error-type")
    assert "Traceback (most recent call last)" in page.inner_text("#traceback")
    assert page.inner_text("#job-status") == "failed"
    assert page.inner_text("#eta").strip() == "-"  # a failed job has no ETA
    assert page.locator("#cancel").count() == 0
    assert page.locator("#artifacts").is_hidden()  # nothing to download
    screenshot(page, "job-failed")


def assert_overlaid(page: Page, chart: str, key: str, names: list[str]) -> None:
    """`chart` plots `key` (waited for: the choice redraws it), one line per name, each
    with a dot per logged point of the 4 steps."""
    page.wait_for_function(
        "([chart, key, n]) => { const svg = document.querySelector(chart);"
        " return svg?.getAttribute('aria-label') === key"
        " && svg.querySelectorAll('polyline.series').length === n; }",
        arg=[chart, key, len(names)],
        timeout=WAIT_MS,
    )
    lines = page.locator(f"{chart} polyline.series")
    assert [lines.nth(i).get_attribute("data-name") for i in range(len(names))] == names
    assert [lines.nth(i).get_attribute("data-count") for i in range(len(names))] == ["4"] * len(
        names
    )
    assert page.locator(f"{chart} circle").count() == 4 * len(names)
    assert page.get_attribute(chart, "data-points") == str(4 * len(names))


def test_compare_overlays_ticked_jobs_and_a_sweep_page_plots_its_trials(
    page: Page, stack: Stack
) -> None:
    """Tick two finished jobs in the list and Compare: their loss curves overlaid, one line
    each with its points, and any other metric they logged, chosen. A sweep's page: its
    status, best trial, the objective against its parameter, and its trials' curves (a
    chosen metric too)."""
    args = {"max_steps": 4, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2}
    jobs = [
        stack.submit(
            tiny_spec(
                name=f"browser-compare-{i}",
                dataset={"eval_fraction": 0.25},
                training_args={**args, "seed": i},
            )
        )
        for i in (1, 2)
    ]
    sweep = stack.http.post(
        "/sweeps",
        json={
            "name": "browser-sweep",
            "base": tiny_spec(
                name="browser-sweep-trial", dataset={"eval_fraction": 0.25}, training_args=args
            ),
            "search_space": {
                "training_args.learning_rate": {
                    "type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                }
            },
            "sampler": "random",
            "max_trials": 2,
            "max_concurrent_trials": 1,
        },
    )  # fmt: skip
    assert sweep.status_code == 201, sweep.text
    for job in jobs:
        assert stack.wait(job["id"])["status"] == "succeeded"

    open_dashboard(page, stack)
    for job in jobs:
        page.check(f'tr.job[data-id="{job["id"]}"] input.pick', timeout=WAIT_MS)
    assert page.inner_text("#compare") == "Compare (2)"
    page.click("#compare")
    page.wait_for_selector("#overlay-loss", timeout=WAIT_MS)
    assert "2 jobs compared" in page.inner_text("#detail h2")
    legend = page.text_content("#overlay-loss .legend") or ""
    assert "browser-compare-1 (4)" in legend and "browser-compare-2 (4)" in legend
    # A third chart of any other metric the ticked jobs logged: the learning rate first,
    # then the gradient norm, chosen; one line per job with each logged point.
    keys = page.locator("#overlay-key option").all_inner_texts()
    assert {"learning_rate", "grad_norm"} <= set(keys) and "loss" not in keys
    assert page.input_value("#overlay-key") == "learning_rate"
    assert page.get_attribute("#overlay-metric", "aria-label") == "learning_rate"
    page.select_option("#overlay-key", "grad_norm")
    grad_norms = {
        job["id"]: stack.http.get(f"/jobs/{job['id']}/metrics?keys=grad_norm").json()["series"][
            "grad_norm"
        ]["points"]
        for job in jobs
    }
    assert [len(points) for points in grad_norms.values()] == [4, 4]
    assert_overlaid(
        page, "#overlay-metric", "grad_norm", ["browser-compare-1", "browser-compare-2"]
    )
    legend = page.text_content("#overlay-metric .legend") or ""
    assert "browser-compare-1 (4)" in legend and "browser-compare-2 (4)" in legend
    screenshot(page, "compare")

    sweep_id = sweep.json()["id"]
    deadline = time.monotonic() + WAIT_MS / 1000
    while stack.http.get(f"/sweeps/{sweep_id}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the sweep did not end"
        time.sleep(0.5)
    page.goto(f"{stack.url}/dashboard#sweep={sweep_id}")
    page.wait_for_selector("#sweep-status.succeeded", timeout=WAIT_MS)
    assert page.inner_text("#sweep-best").startswith("best: trial")
    scatter = page.get_attribute("#sweep-param-0", "data-points")
    assert scatter == "2"  # both trials' objective against the learning rate
    page.wait_for_selector("#sweep-curves #overlay-loss", timeout=WAIT_MS)
    assert page.locator("#trials tr").count() == 3  # a header and two trials
    # The trials' curves of a chosen metric, as on a comparison.
    page.select_option("#sweep-curves #overlay-key", "grad_norm", timeout=WAIT_MS)
    assert_overlaid(page, "#sweep-curves #overlay-metric", "grad_norm", ["trial 0", "trial 1"])
    screenshot(page, "sweep")
