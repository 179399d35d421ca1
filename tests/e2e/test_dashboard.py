"""The admin dashboard at /dashboard, in a real browser (Debian's chromium driven by Playwright) against a
live embedded stack. The browser talks to the public API only, with the key typed into its sign-in form.

Screenshots land in each test's tmp_path; with SAVE_SCREENSHOTS=1 they are also copied to docs/screenshots/.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.settings import Settings
from tests.helpers import wait_until
from tests.stack import LiveStack, wait_for_request

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the dashboard's browser tests need Debian's chromium at /usr/bin/chromium "
    "(apt-get install -y chromium); CI installs it",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    live = LiveStack(env={"UNLEARN_VAR_DIR": str(tmp / "var")}, log_path=tmp / "stack.log")
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def admin_key(stack: LiveStack) -> str:
    return (stack.var_dir / "admin.key").read_text().strip()


@pytest.fixture(scope="module")
def browser(stack: LiveStack) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test (its own sessionStorage), failing the test on any script error."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, errors


def make_key(stack: LiveStack, scopes: list[str]) -> str:
    from service.core.db.engine import session_scope
    from service.core.keys import create_key

    settings = Settings(**stack.env)  # type: ignore[arg-type]
    with session_scope(settings.resolved_database_url) as s:
        _, plaintext = create_key(s, tenant="default", scopes=scopes, name="dashboard test")
    return plaintext


def sign_in(page: Any, stack: LiveStack, key: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.base_url}/dashboard/")
    page.fill("#key-input", key)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#nav")).to_be_visible(timeout=10_000)


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def go(page: Any, route: str) -> None:
    """Navigate inside the single page (a hash change: no reload)."""
    page.evaluate("route => { location.hash = route; }", route)


def test_dashboard_files_are_served_without_a_key_under_a_strict_policy(stack: LiveStack) -> None:
    with httpx.Client(base_url=stack.base_url) as c:
        assert c.get("/dashboard").headers["location"] == "/dashboard/"
        index = c.get("/dashboard/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        csp = index.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        assert c.get("/dashboard/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/dashboard/style.css").headers["content-type"].startswith("text/css")
        for bad in ("/dashboard/nope.js", "/dashboard/..%2Fapp.py", "/dashboard/__init__.py"):
            r = c.get(bad)
            assert r.status_code == 404 and r.json()["detail"], bad
        assert not [p for p in c.get("/openapi.json").json()["paths"] if p.startswith("/dashboard")]
    # Plain files, no third-party code: every script and stylesheet comes from this origin.
    static = ROOT / "service" / "dashboard"
    assert "http" not in (static / "index.html").read_text()
    modules = sorted(static.glob("*.js"))
    assert len(modules) > 1  # ES modules, each imported relative to this origin
    for module in modules:
        assert "http" not in module.read_text().replace('"http://www.w3.org/2000/svg"', ""), module.name


@needs_chromium
def test_a_wrong_key_is_refused_at_sign_in_and_not_kept(page: Any, stack: LiveStack) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.base_url}/dashboard/")
    paint = page.evaluate(
        "() => (performance.getEntriesByName('first-contentful-paint')[0]"
        " || performance.getEntriesByType('navigation')[0]).startTime"
    )
    assert paint < 1000, f"first paint after {paint:.0f} ms"
    page.fill("#key-input", "ul_wrong_key")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("invalid or revoked API key")
    assert page.evaluate("sessionStorage.getItem('unlearn.apiKey')") is None
    expect(page.locator("#nav")).to_be_hidden()


@needs_chromium
def test_jobs_page_follows_a_job_to_100_percent_and_the_chart_shows_the_new_version(
    page: Any, stack: LiveStack, admin_key: str, tmp_path: Path
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    sign_in(page, stack, admin_key)
    go(page, "#/jobs")
    expect(page.locator("[data-page=jobs]")).to_be_visible()
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads

    ids = sorted(random.Random(11).sample([f"digits-{i:04d}" for i in range(1437)], 30))
    with stack.client() as api:
        r = api.post("/v1/models/digits/deletion-requests", json={"sample_ids": ids, "reference": "dash-1"})
        assert r.status_code == 202, r.text
        job_id = wait_until(
            lambda: api.get(f"/v1/deletion-requests/{r.json()['id']}").json()["job_id"],
            timeout=120,
            what="a job to claim the request",
        )

    bar = page.locator(f'[role=progressbar][data-job-id="{job_id}"]')
    expect(bar).to_be_visible(timeout=15_000)
    try:  # best effort: a picture of the bar mid-way (the demo job takes a few seconds)
        page.wait_for_selector(
            f'tr[data-job-id="{job_id}"][data-state=running] [role=progressbar]:not([aria-valuenow="0"])',
            timeout=5_000,
        )
        save_screenshot(page, tmp_path, "dashboard-jobs-running.png")
    except PlaywrightTimeout:
        pass
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=180_000)
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_have_attribute("data-state", "completed")
    expect(row).to_contain_text("v1 → v2")
    assert page.evaluate("window.__sameDocument") is True, "the jobs page reloaded instead of polling"
    save_screenshot(page, tmp_path, "dashboard-jobs.png")
    # The job's page says what ran: the default sizes the run from the model, which its params don't show.
    with stack.client() as api:
        (run,) = api.get(f"/v1/jobs/{job_id}").json()["metrics"]["attempts"][0]["runs"]
    go(page, f"#/jobs/{job_id}")
    expect(page.locator("td.run")).to_have_text(re.compile(rf"^{run['steps']} steps \(\d+\.\d pushes/sample"))

    with stack.client() as api:
        v2 = api.get("/v1/models/digits/versions").json()[-1]
    assert v2["version"] == "v2"
    go(page, "#/models/digits")
    expect(page.locator('svg.chart circle[data-version="v2"]')).to_have_count(4)  # UA, MIA, RA, TA
    expect(page.locator('svg.chart circle[data-version="v1"]')).to_have_count(2)  # v1: RA, TA only
    expect(page.locator('table.versions tr[data-version="v2"]')).to_contain_text(v2["checkpoint_sha256"])
    save_screenshot(page, tmp_path, "dashboard-versions.png")

    # The key went in headers only: never in a URL the browser requested.
    secret = admin_key.split("_", 2)[2]  # ul_<id>_<secret>: the secret itself may hold "_"
    assert urls and not [u for u in urls if admin_key in u or secret in u]
    assert page.evaluate("sessionStorage.getItem('unlearn.apiKey')") == admin_key


@needs_chromium
def test_an_admin_cancels_a_running_job_from_the_jobs_page(
    page: Any, stack: LiveStack, admin_key: str
) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack, admin_key)
    go(page, "#/jobs")
    expect(page.locator("[data-page=jobs]")).to_be_visible()
    with stack.client() as api:
        # Many epochs, so the job is still unlearning when the button is clicked.
        assert (
            api.patch(
                "/v1/models/digits", json={"default_params": {"epochs": 200, "retain_budget": 0}}
            ).status_code
            == 200
        )
        r = api.post(
            "/v1/models/digits/deletion-requests",
            json={"sample_ids": [f"digits-{i:04d}" for i in range(300, 340)], "reference": "dash-cancel"},
        )
        assert r.status_code == 202, r.text
        job_id = wait_until(
            lambda: api.get(f"/v1/deletion-requests/{r.json()['id']}").json()["job_id"],
            timeout=120,
            what="a job to claim the request",
        )
        cancel = page.locator(f'tr[data-job-id="{job_id}"][data-state=running] button:has-text("Cancel")')
        expect(cancel).to_be_enabled(timeout=15_000)
        cancel.click()

        def cancel_recorded() -> bool:
            events = api.get("/v1/audit/export", params={"format": "jsonl"}).text.splitlines()
            return any('"job.cancel_requested"' in e and job_id in e for e in events)

        wait_until(cancel_recorded, timeout=30, what="the cancel request in the audit trail")
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        # A cancel recorded before the publishing commit always wins: the job ends cancelled.
        expect(row).to_have_attribute("data-state", "cancelled", timeout=120_000)
        assert wait_for_request(api, r.json()["id"])["state"] == "cancelled"
        # A policy patch merges key by key: null removes the key, {} would leave 200 epochs in place.
        restored = api.patch("/v1/models/digits", json={"default_params": {"epochs": None}})
        assert restored.status_code == 200 and "epochs" not in restored.json()["default_params"], (
            restored.text
        )


@needs_chromium
def test_a_key_without_jobs_read_sees_the_jobs_section_disabled_with_the_reason(
    page: Any, stack: LiveStack, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack, make_key(stack, ["deletion:write"]))
    expect(page.locator("[data-page=requests]")).to_be_visible()  # lands on a section it may see
    jobs_link = page.locator("#nav a[data-section=jobs]")
    expect(jobs_link).to_have_class(re.compile(r"\bdisabled\b"))
    expect(jobs_link).to_have_attribute("title", "this API key lacks the scope 'jobs:read'")
    go(page, "#/jobs")
    expect(page.locator(".panel.disabled .disabled-reason")).to_have_text(
        "this API key lacks the scope 'jobs:read'"
    )
    expect(page.locator(".panel.disabled")).to_contain_text("jobs:read")
    expect(page.locator("table.jobs")).to_have_count(0)
    save_screenshot(page, tmp_path, "dashboard-jobs-disabled.png")
    # The same key may still list and submit deletion requests, and the header says it holds that scope
    # (read from GET /v1/keys/me: probing reads gave a deletion:write key no badge at all).
    go(page, "#/requests")
    expect(page.locator("[data-page=requests]")).to_be_visible()
    expect(page.locator("#who-scopes")).to_have_text("deletion:write")
    expect(page.locator("summary", has_text="New deletion request")).to_have_count(1)
    expect(page.locator("#nav a[data-section=audit]")).to_have_class(re.compile(r"\bdisabled\b"))


@needs_chromium
def test_a_key_that_cannot_write_is_not_offered_the_new_request_form(page: Any, stack: LiveStack) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack, make_key(stack, ["audit:read"]))
    go(page, "#/requests")
    expect(page.locator("[data-page=requests]")).to_be_visible()
    expect(page.locator("#who-scopes")).to_have_text("audit:read")
    expect(page.locator("summary", has_text="New deletion request")).to_have_count(0)
    expect(page.locator("[data-page=requests]")).to_contain_text("lacks the scope 'deletion:write'")


@needs_chromium
def test_search_by_reference_finds_a_request_and_shows_its_signed_certificate(
    page: Any, stack: LiveStack, admin_key: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with stack.client() as api:
        r = api.post(
            "/v1/models/digits/deletion-requests",
            json={"sample_ids": ["digits-0005", "digits-0006"], "reference": "dash-search"},
        )
        assert r.status_code == 202, r.text
        req = wait_for_request(api, r.json()["id"])
        assert req["state"] == "completed", req
        cert = api.get(f"/v1/deletion-requests/{req['id']}/certificate").json()

    sign_in(page, stack, admin_key)
    go(page, "#/requests")
    page.fill("[data-page=requests] input[name=q]", "dash-search")
    page.click("[data-page=requests] form[role=search] button[type=submit]")
    link = page.locator(f'tr[data-request-id="{req["id"]}"] a[href="#/requests/{req["id"]}"]')
    expect(page.locator("table.requests tbody tr")).to_have_count(1)
    link.click()
    certificate = page.locator(".certificate")
    expect(certificate).to_contain_text(cert["certificate"]["sample_ids_sha256"])
    expect(certificate).to_contain_text(cert["certificate"]["version_after"]["checkpoint_sha256"])
    expect(certificate).to_contain_text(cert["signature"]["public_key"])
    save_screenshot(page, tmp_path, "dashboard-certificate.png")
    # The download verifies offline: a re-serialised one (16.0 written as 16) never did (a probe).
    with page.expect_download() as info:
        page.click("text=Download certificate (JSON)")
    saved = tmp_path / "certificate.json"
    info.value.save_as(saved)
    from service.cli.audit_log import certificate_evidence
    from service.core.signing import verify_document

    signed = json.loads(saved.read_text())
    assert verify_document(signed, cert["signature"]["public_key"]) == (True, "signature valid")
    assert certificate_evidence(signed, cert["signature"]["public_key"])[0]

    # Searching by the request's id finds it too.
    go(page, "#/requests")
    page.fill("[data-page=requests] input[name=q]", req["id"])
    page.click("[data-page=requests] form[role=search] button[type=submit]")
    expect(page.locator("table.requests tbody tr")).to_have_count(1)
    expect(page.locator("table.requests tbody tr")).to_have_attribute("data-request-id", req["id"])


@needs_chromium
def test_a_long_reference_wraps_and_a_malformed_route_says_not_found(
    page: Any, stack: LiveStack, admin_key: str
) -> None:
    """A 500-character reference pushed the requests table to 7,274 px, its columns off-screen, and a
    route with a malformed escape threw out of render (the page fixture fails on any script error) and
    left the page on "Loading…" (a probe)."""
    from playwright.sync_api import expect

    with stack.client() as api:
        r = api.post(
            "/v1/models/digits/deletion-requests",
            json={"sample_ids": ["digits-0009"], "reference": "W" * 500},
        )
        assert r.status_code == 202, r.text
    sign_in(page, stack, admin_key)
    go(page, "#/requests")
    expect(page.locator(f'tr[data-request-id="{r.json()["id"]}"]')).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]
    go(page, "#/models/%E0%A4%A")
    expect(page.locator("#view p.error")).to_contain_text("%E0%A4%A")
    # "." is resolved away by the browser: the page of one object got its collection (a probe)
    for route in ("#/requests/.", "#/jobs/..", "#/models/%2E"):
        go(page, route)
        expect(page.locator("#view p.error")).to_contain_text("names no object")
    # a bidi override reordered the rest of the reference on screen: shown as its escape (a probe)
    with stack.client() as api:
        spoof = api.post(
            "/v1/models/digits/deletion-requests",
            json={"sample_ids": ["digits-0019"], "reference": "invoice\u202egnp.exe"},
        )
        assert spoof.status_code == 202, spoof.text
    go(page, f"#/requests/{spoof.json()['id']}")
    expect(page.locator("#view")).to_contain_text("invoice\\u202egnp.exe")
    go(page, "#/audit")  # an event's data is in a cell's tooltip too
    cell = page.locator("td.data", has_text="invoice").first
    expect(cell).to_have_attribute("title", re.compile(r"invoice\\u202egnp\.exe"))


@needs_chromium
def test_the_new_request_form_sends_the_reason_and_the_request_page_shows_it(
    page: Any, stack: LiveStack, admin_key: str
) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack, admin_key)
    go(page, "#/requests")
    page.click("text=New deletion request")
    form = page.locator("form.new-request")
    form.locator("input[name=reference]").fill("dash-reason")
    form.locator("select[name=reason]").select_option("mislabeled")
    form.locator("textarea[name=ids]").fill("digits-0011\ndigits-0012")
    form.locator("button[type=submit]").click()
    expect(form.locator("p.ok")).to_contain_text("Accepted")
    with stack.client() as api:
        [req] = api.get("/v1/deletion-requests", params={"reference": "dash-reason"}).json()["items"]
    assert req["reason"] == "mislabeled" and req["sample_count"] == 2
    go(page, f"#/requests/{req['id']}")
    expect(page.locator("dl")).to_contain_text("mislabeled")


@needs_chromium
def test_audit_page_verifies_the_chain_and_exports_it(
    page: Any, stack: LiveStack, admin_key: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack, admin_key)
    go(page, "#/audit")
    expect(page.locator("table.audit tbody tr").first).to_be_visible()
    page.click("#verify-chain")
    expect(page.locator(".verify-result")).to_contain_text("Chain verified")
    with page.expect_download() as info:
        page.click("text=Export JSONL")
    exported = tmp_path / "audit.jsonl"
    info.value.save_as(exported)
    lines = exported.read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines)
    with page.expect_download() as info:  # PEM, which every --public-key takes (it saved JSON: a probe)
        page.click("text=Public key (PEM)")
    pem = tmp_path / "key.pem"
    info.value.save_as(pem)
    from service.core.signing import public_key_b64_from_pem

    with stack.client() as api:
        served = api.get("/v1/audit/public-key").json()["public_key"]
    assert public_key_b64_from_pem(pem.read_text()) == served
    save_screenshot(page, tmp_path, "dashboard-audit.png")


@needs_chromium
def test_a_jobs_attempts_say_which_deleted_class_was_switched_off(
    page: Any, stack: LiveStack, admin_key: str, tmp_path: Path
) -> None:
    """A class one job deleted whole is switched off in every later version (silenced_classes): the job
    page's attempts table says so beside the metrics, as the API does."""
    from playwright.sync_api import expect

    from models.datasets import load_digits_split

    train, _ = load_digits_split()  # the demo model's training set
    sevens = [sid for sid, y in zip(train.ids, train.y.tolist(), strict=True) if y == 7]
    others = [sid for sid, y in zip(train.ids, train.y.tolist(), strict=True) if y != 7][:5]
    with stack.client() as api:
        for ids in (sevens, others):
            r = api.post("/v1/models/digits/deletion-requests", json={"sample_ids": ids})
            assert r.status_code == 202, r.text
            req = wait_for_request(api, r.json()["id"])
            assert req["state"] == "completed", req
        attempts = api.get(f"/v1/jobs/{req['job_id']}").json()["metrics"]["attempts"]
    assert attempts[0].get("silenced_classes") == [7], attempts

    sign_in(page, stack, admin_key)
    go(page, f"#/jobs/{req['job_id']}")
    notes = page.locator("td.notes").first
    expect(notes).to_contain_text("switched off (deleted by an earlier job): class 7")
    save_screenshot(page, tmp_path, "dashboard-job-attempts.png")


@needs_chromium
def test_the_dashboard_says_requests_will_wait_while_no_worker_is_alive(page: Any, tmp_path: Path) -> None:
    """An API with no worker yet: the banner quotes /readyz; once a worker beats, it goes away."""
    import subprocess

    from playwright.sync_api import expect

    from tests.helpers import free_port
    from tests.stack import UNLEARN

    port = free_port()
    env = {
        **os.environ,
        "UNLEARN_VAR_DIR": str(tmp_path / "var"),
        "UNLEARN_DEMO": "false",
        "PORT": str(port),
        "UNLEARN_HEARTBEAT_SECONDS": "0.5",
    }
    subprocess.run([UNLEARN, "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [UNLEARN, "keys", "create", "--tenant", "default", "--scopes", "admin"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    procs = []
    with open(tmp_path / "procs.log", "ab") as log:
        try:
            procs.append(subprocess.Popen([UNLEARN, "api"], env=env, stdout=log, stderr=log))
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(f"{url}/healthz"), timeout=60, what="the API alone")
            page.goto(f"{url}/dashboard/")
            page.fill("#key-input", key)
            page.click("#login-form button[type=submit]")
            banner = page.locator("#readiness")
            expect(banner).to_be_visible(timeout=15_000)
            expect(banner).to_contain_text("workers: no worker is running")
            expect(banner).to_contain_text("wait")
            save_screenshot(page, tmp_path, "dashboard-not-ready.png")
            procs.append(subprocess.Popen([UNLEARN, "worker"], env=env, stdout=log, stderr=log))
            expect(banner).to_be_hidden(timeout=90_000)
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@needs_chromium
def test_the_interactive_schema_renders_the_apis_operations_in_a_browser(page: Any, stack: LiveStack) -> None:
    """/docs in a browser: Swagger UI (the service's own copy, under its own policy) lists the routes.
    Swagger UI 4 answered FastAPI's OpenAPI 3.1 with "Unable to render this definition" (a review)."""
    from playwright.sync_api import expect

    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{stack.base_url}/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=20_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/models/{model}/deletion-requests" in p.replace("\u200b", "") for p in paths), paths
    assert not blocked, blocked
