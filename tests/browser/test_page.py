"""The hub's status page in a real Chromium, against a real hub, gateway and Argo CD simulator.

One story, in order: log in before any gateway exists, watch the gateway and its applications
arrive, measure the first paint with the whole fleet, change Argo CD and see it live, filter,
open an application and its timeline, show hostile data as text, refuse unprotected requests,
apply roles, and stop the gateway."""

import http.server
import json
import os
import statistics
import threading
import time
import urllib.request
from datetime import datetime

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from conftest import APPS, SCREENSHOTS, WAIT, WEB_URL, wait_until

HOSTILE = '<img src=x onerror="window.__xss=1">'


def shot(driver, name):
    path = os.path.join(SCREENSHOTS, name)
    driver.save_screenshot(path)
    print(f"screenshot: {path}")


def by_id(driver, id_):
    return driver.find_element(By.ID, id_)


def click(driver, element):
    """Clicks as a user would, with the element in view (not under the sticky header)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def click_live(wait, css, text=None):
    """Clicks an element of a table the feed keeps re-rendering: found and clicked afresh until
    one click lands."""

    def attempt(d):
        try:
            found = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_enabled() and (text is None or e.text == text)]
            if not found:
                return False
            click(d, found[0])
            return True
        except StaleElementReferenceException:
            return False

    wait.until(attempt)


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#apps tbody tr[data-key]")


def row_texts(driver):
    """The application rows' texts, read at one instant (the table re-renders live)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#apps tbody tr[data-key]')).map((r) => r.innerText)"
    )


def row_names(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#apps tbody tr[data-key] td.name a')).map((a) => a.textContent)"
    )


def total_shown(driver):
    text = by_id(driver, "app-summary").text  # "10,000 matching"
    return int(text.split()[0].replace(",", "")) if text else -1


def page_fetch(driver, method, path, body=None, csrf=None):
    """A request made by the page itself, with its cookie (and a CSRF header when given)."""
    return driver.execute_async_script(
        """
        const [method, path, body, csrf, done] = arguments;
        const headers = {'Content-Type': 'application/json'};
        if (csrf) headers['X-CSRF-Token'] = csrf;
        fetch(path, {method, headers, credentials: 'same-origin',
                     body: body === null ? undefined : JSON.stringify(body)})
          .then(async (r) => done({status: r.status, body: await r.text()}))
          .catch((e) => done({status: 0, body: String(e)}));
        """,
        method, path, body, csrf,
    )


def session_csrf(driver):
    r = page_fetch(driver, "GET", "/api/v1/session")
    assert r["status"] == 200, r
    return json.loads(r["body"])["csrfToken"]


def log_in(driver, wait, fleet, token):
    driver.get(fleet.url + "/")
    wait.until(lambda d: not by_id(d, "login-view").get_attribute("hidden") or not by_id(d, "overview-view").get_attribute("hidden"))
    if not by_id(driver, "overview-view").get_attribute("hidden"):
        by_id(driver, "logout").click()
        wait.until(lambda d: by_id(d, "login-view").is_displayed())
    by_id(driver, "login-token").send_keys(token)
    by_id(driver, "login-submit").click()
    wait.until(lambda d: by_id(d, "overview-view").is_displayed())


def api_total(fleet, query):
    status, v = fleet.api("GET", f"/api/v1/applications?limit=1&{query}")
    assert status == 200, v
    return v["total"]


def sim_requests(fleet, suffix):
    _, v = fleet.sim("GET", "/requests")
    return [r for r in v["items"] if r["method"] == "POST" and r["path"].endswith(suffix)]


def gateway_id(fleet):
    _, v = fleet.api("GET", "/api/v1/gateways")
    return v["items"][0]["id"]


def test_01_log_in_and_watch_the_gateway_and_its_applications_arrive(fleet, driver, wait):
    driver.get(fleet.url + "/")
    wait.until(lambda d: by_id(d, "login-view").is_displayed())
    shot(driver, "login.png")
    by_id(driver, "login-token").send_keys("not-a-token")
    by_id(driver, "login-submit").click()
    wait.until(lambda d: "invalid token" in by_id(d, "login-error").text)
    by_id(driver, "login-token").clear()
    log_in(driver, wait, fleet, fleet.admin_token)
    assert "admin" in by_id(driver, "who").text
    wait.until(lambda d: by_id(d, "live").text == "live")
    assert by_id(driver, "gw-empty").is_displayed()
    # Marks this document: a reload would lose it.
    driver.execute_script("window.__sameDocument = 'still here'")

    started = time.monotonic()
    fleet.start_gateway()
    wait.until(lambda d: "browser-gw" in by_id(d, "gateways").text and "connected" in by_id(d, "gateways").text)
    wait.until(lambda d: "staging" in by_id(d, "gateways").text)
    print(f"gateway shown {time.monotonic() - started:.1f} s after it was started")
    wait_until("every application is listed", lambda: total_shown(driver) == APPS, timeout=240)
    wait.until(lambda d: len(rows(d)) == 50)
    print(f"{APPS} applications listed {time.monotonic() - started:.1f} s after the gateway started")
    assert driver.execute_script("return window.__sameDocument") == "still here", "the page was reloaded"
    assert row_names(driver)[:3] == ["app-00000", "app-00001", "app-00002"]
    wait.until(lambda d: f"Healthy {APPS:,}" in by_id(d, "gateways").text)


def test_02_first_paint_with_the_whole_fleet(fleet, driver, wait):
    figures = []
    for _ in range(5):
        driver.get("about:blank")
        driver.get(fleet.url + "/")
        wait.until(lambda d: d.execute_script("return document.body.dataset.appsRendered === 'true'"))
        listed, fcp = driver.execute_script(
            """
            const m = performance.getEntriesByName('apps-rendered')[0];
            const p = performance.getEntriesByName('first-contentful-paint')[0];
            return [m ? m.startTime : null, p ? p.startTime : null];
            """
        )
        figures.append((listed, fcp))
    listed = sorted(f[0] for f in figures)
    fcp = sorted(f[1] for f in figures if f[1] is not None)
    print(
        f"first paint of the application list with {APPS} applications: best {listed[0]:.0f} ms, "
        f"median {statistics.median(listed):.0f} ms (target <= 1000 ms); "
        f"first contentful paint: best {fcp[0]:.0f} ms"
    )
    # Generous: the figure above is the measurement, this only catches a broken page.
    assert listed[0] < 5000
    assert len(rows(driver)) == 50
    shot(driver, "overview.png")


def test_03_a_health_change_in_argo_cd_shows_within_a_second(fleet, driver, wait):
    driver.execute_script(
        """
        window.__seen = null;
        const body = document.querySelector('#apps tbody');
        new MutationObserver(() => {
          const r = body.querySelector('tr[data-key$="|argocd/app-00003"]');
          if (!window.__seen && r && r.textContent.includes('Degraded')) window.__seen = Date.now();
        }).observe(body, {childList: true, subtree: true, characterData: true});
        """
    )
    changed_at = time.time() * 1000
    assert fleet.sim("POST", "/apps/argocd/app-00003/health", {"status": "Degraded", "message": "pod crash-looping"})[0] == 204
    seen = wait_until("the change shows", lambda: driver.execute_script("return window.__seen"), timeout=WAIT, every=0.02)
    took = seen - changed_at
    print(f"Argo CD health change visible on the page after {took:.0f} ms")
    assert took < 1000, f"took {took:.0f} ms"
    assert any("app-00003" in t and "Degraded" in t for t in row_texts(driver))
    # The gateway's counts follow.
    wait.until(lambda d: "Degraded 1" in by_id(d, "gateways").text)


def test_04_filters_and_search(fleet, driver, wait):
    def settle(query, predicate=None):
        want = api_total(fleet, query)
        wait.until(lambda d: total_shown(d) == want)
        if predicate:
            wait.until(lambda d: (texts := row_texts(d)) and all(predicate(t) for t in texts))
        return want

    Select(by_id(driver, "f-health")).select_by_visible_text("Degraded")
    assert settle("health=Degraded") == 1
    wait.until(lambda d: row_names(d) == ["app-00003"])
    Select(by_id(driver, "f-health")).select_by_index(0)

    by_id(driver, "f-q").send_keys("app-0004")
    settle("q=app-0004", lambda t: "app-0004" in t)
    by_id(driver, "f-q").clear()
    by_id(driver, "f-q").send_keys(" ")  # an input event for the cleared box
    settle("")

    Select(by_id(driver, "f-project")).select_by_visible_text("team-a")
    settle("project=team-a", lambda t: "team-a" in t)
    by_id(driver, "f-selector").send_keys("tier=web")
    settle("project=team-a&selector=tier%3Dweb", lambda t: "tier=web" in t and "team-a" in t)
    click(driver, by_id(driver, "f-clear"))
    settle("")

    by_id(driver, "f-annotation").send_keys("argocd.argoproj.io/manifest-generate-paths=.")
    assert settle("annotation=argocd.argoproj.io%2Fmanifest-generate-paths%3D.") == APPS
    click(driver, by_id(driver, "f-clear"))

    gw = gateway_id(fleet)
    Select(by_id(driver, "f-gateway")).select_by_value(gw)
    assert settle(f"gateway={gw}") == APPS
    click(driver, by_id(driver, "f-clear"))

    # Sorting by name, twice: descending.
    header = driver.find_element(By.CSS_SELECTOR, '#apps th[data-sort="name"]')
    click(driver, header)
    wait.until(lambda d: row_names(d)[:1] == ["app-00000"])
    click(driver, header)
    last = f"app-{APPS - 1:05d}"
    wait.until(lambda d: row_names(d)[:1] == [last])
    # Server-side paging.
    click(driver, by_id(driver, "next"))
    wait.until(lambda d: by_id(d, "range").text.startswith("51–100 of"))
    assert row_names(driver)[0] == f"app-{APPS - 51:05d}"
    driver.get(fleet.url + "/#/")
    wait.until(lambda d: len(rows(d)) == 50)


def test_05_the_application_page_shows_the_timeline_with_the_change(fleet, driver, wait):
    click_live(wait, 'tr[data-key$="|argocd/app-00003"] td.name a')
    wait.until(lambda d: by_id(d, "app-view").is_displayed() and by_id(d, "a-title").text == "app-00003")
    wait.until(lambda d: "Degraded" in by_id(d, "a-badges").text)
    # The timeline picture: a Degraded segment on the health lane, after the first sighting.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#a-timeline svg rect.seg[data-value="Degraded"]'))
    # Read at one instant: the picture is redrawn when the application changes.
    title, healthy, transitions = driver.execute_script(
        """
        const seg = document.querySelector('#a-timeline svg rect.seg[data-value="Degraded"] title');
        return [seg && seg.textContent,
                document.querySelectorAll('#a-timeline svg rect.seg[data-value="Healthy"]').length,
                Array.from(document.querySelectorAll('#a-transitions tbody tr')).map((r) => r.innerText)];
        """
    )
    assert "Health Degraded" in title and "pod crash-looping" in title, title
    assert healthy > 0
    assert len(transitions) >= 2, transitions
    assert "health" in transitions[0] and "Degraded" in transitions[0], transitions
    assert "first" in transitions[-1], transitions
    # Everything else on the page.
    link = by_id(driver, "a-argocd")
    assert link.is_displayed()
    assert link.get_attribute("href") == WEB_URL + "applications/argocd/app-00003"
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#a-resources tbody tr")) == 2
    assert "pod crash-looping" in by_id(driver, "a-summary").text
    click(driver, by_id(driver, "load-tree"))
    wait.until(lambda d: "Deployment" in by_id(d, "a-live").text and "resource tree" in by_id(d, "a-live").text)
    click(driver, by_id(driver, "load-events"))
    wait.until(lambda d: "ResourceUpdated" in by_id(d, "a-live").text)
    by_id(driver, "logs-pod").send_keys("guestbook-ui-0")
    by_id(driver, "logs-tail").clear()
    by_id(driver, "logs-tail").send_keys("5")
    click(driver, driver.find_element(By.CSS_SELECTOR, "#logs-form button"))
    wait.until(lambda d: "guestbook-ui-0 log line 19" in by_id(d, "a-live").text)
    # A second change arrives on the open page, live.
    fleet.sim("POST", "/apps/argocd/app-00003/health", {"status": "Healthy", "message": ""})
    wait.until(lambda d: "Healthy" in by_id(d, "a-badges").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#a-transitions tbody tr")) >= 3)
    driver.execute_script("window.scrollTo(0, 0)")
    shot(driver, "application.png")


def test_06_hostile_names_and_annotations_are_text_and_run_nothing(fleet, driver, wait):
    app = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": HOSTILE,
            "namespace": "argocd",
            "labels": {"team": "<b>bold</b>"},
            "annotations": {"note": HOSTILE, "link": "javascript:window.__xss=3"},
        },
        "spec": {
            "project": "<i>proj</i>",
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "<svg onload=window.__xss=4>"},
            "source": {"repoURL": "https://example.com/x.git", "path": ".", "targetRevision": "HEAD"},
        },
        "status": {
            "sync": {"status": "Synced", "revision": "abc"},
            "health": {"status": "Degraded", "message": "<script>window.__xss=2</script>"},
        },
    }
    assert fleet.sim("POST", "/apps", app)[0] == 204
    driver.get(fleet.url + "/#/?q=onerror")
    wait.until(lambda d: row_names(d) == [HOSTILE])
    text = row_texts(driver)[0]
    assert "<b>bold</b>" in text and "<i>proj</i>" in text, text
    click_live(wait, "#apps tbody tr[data-key] td.name a")
    wait.until(lambda d: by_id(d, "a-title").text == HOSTILE)
    summary = by_id(driver, "a-summary").text
    for text in [HOSTILE, "javascript:window.__xss=3", "<script>window.__xss=2</script>", "<svg onload=window.__xss=4>"]:
        assert text in summary, text
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#a-transitions tbody tr"))
    time.sleep(0.5)
    assert driver.execute_script("return window.__xss") is None
    assert driver.execute_script("return document.querySelectorAll('img, script:not([src]), svg [onload], a[href^=javascript]').length") == 0
    console = [e["message"] for e in driver.get_log("browser")]
    assert not [m for m in console if "Content Security Policy" in m], console
    shot(driver, "hostile.png")


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self):  # noqa: N802 (http.server's name)
        page = (
            "<!doctype html><form id=f method=POST action='%s' enctype='text/plain'>"
            "<input name='{\"prune\":true,\"x\":\"' value='\"}'></form>"
            "<script>document.getElementById('f').submit()</script>" % self.target
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args):
        pass


def test_07_a_state_changing_request_without_the_session_protection_is_refused(fleet, driver, wait):
    log_in(driver, wait, fleet, fleet.admin_token)
    gw = gateway_id(fleet)
    sync = f"/api/v1/gateways/{gw}/applications/argocd/app-00004/sync"
    fleet.sim("DELETE", "/requests")

    # From the page itself, with the cookie but without the session's CSRF token.
    r = page_fetch(driver, "POST", sync, {})
    assert r["status"] == 403, r
    assert json.loads(r["body"])["code"] == "csrf"
    r = page_fetch(driver, "POST", sync, {}, csrf="guessed")
    assert r["status"] == 403, r

    # From another origin on this machine: a form that posts to the hub on its own.
    _AttackerPage.target = fleet.url + sync
    server = http.server.HTTPServer(("127.0.0.1", 0), _AttackerPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait.until(lambda d: d.current_url.startswith(fleet.url))
        answer = driver.find_element(By.TAG_NAME, "body").text
        print(f"the cross-origin form post was answered: {answer}")
        assert '"code":"csrf"' in answer or '"code":"unauthorized"' in answer, answer
    finally:
        server.shutdown()
    time.sleep(0.5)
    assert sim_requests(fleet, "/app-00004/sync") == [], "a refused request reached Argo CD"

    # The page's own request, with the protection, goes through.
    driver.get(fleet.url + "/")
    wait.until(lambda d: by_id(d, "overview-view").is_displayed())
    r = page_fetch(driver, "POST", sync, {}, csrf=session_csrf(driver))
    assert r["status"] == 200, r
    assert sim_requests(fleet, "/app-00004/sync")


def test_08_a_viewer_cannot_sync_while_an_operator_can(fleet, driver, wait):
    viewer = json.loads(fleet.cli("api-token", "create", "--name", "dashboards", "--role", "viewer", "-o", "json"))["token"]
    operator = json.loads(fleet.cli("api-token", "create", "--name", "oncall", "--role", "operator", "-o", "json"))["token"]
    listed = fleet.cli("api-token", "list")
    assert "dashboards" in listed and "viewer" in listed and viewer not in listed
    gw = gateway_id(fleet)
    sync = f"/api/v1/gateways/{gw}/applications/argocd/app-00005/sync"
    fleet.sim("DELETE", "/requests")

    log_in(driver, wait, fleet, viewer)
    assert by_id(driver, "who").text == "dashboards · viewer"
    driver.get(fleet.url + f"/#/app/{gw}/argocd/app-00005")
    wait.until(lambda d: by_id(d, "a-title").text == "app-00005")
    button = by_id(driver, "sync")
    assert not button.is_enabled() and "operator" in button.get_attribute("title")
    r = page_fetch(driver, "POST", sync, {}, csrf=session_csrf(driver))
    assert r["status"] == 403, r
    body = json.loads(r["body"])
    assert body["code"] == "forbidden" and body["requiredRole"] == "operator", body
    assert sim_requests(fleet, "/app-00005/sync") == []

    log_in(driver, wait, fleet, operator)
    assert by_id(driver, "who").text == "oncall · operator"
    driver.get(fleet.url + f"/#/app/{gw}/argocd/app-00005")
    wait.until(lambda d: by_id(d, "a-title").text == "app-00005" and by_id(d, "sync").is_enabled())
    click(driver, by_id(driver, "sync"))
    wait.until(lambda d: "Sync of app-00005: done" in by_id(d, "toast").text)
    assert sim_requests(fleet, "/app-00005/sync")
    click(driver, by_id(driver, "refresh"))
    wait.until(lambda d: "Refresh of app-00005: done" in by_id(d, "toast").text)
    # An operator may health-check a gateway, but not manage API tokens.
    driver.get(fleet.url + "/#/")
    click_live(wait, "#gateways button", "Health check")
    wait.until(lambda d: "Health check of browser-gw" in by_id(d, "toast").text)
    wait.until(lambda d: "not yet" not in by_id(d, "gateways").text)
    r = page_fetch(driver, "GET", "/api/v1/api-tokens")
    assert r["status"] == 403, r


def test_09_stopping_the_gateway_marks_it_disconnected_and_its_applications_stale(fleet, driver, wait):
    driver.get(fleet.url + "/#/")
    wait.until(lambda d: len(rows(d)) == 50 and "connected" in by_id(d, "gateways").text)
    driver.execute_script(
        """
        window.__stale = null;
        const check = () => {
          const gw = document.querySelector('#gateways tbody tr');
          const app = document.querySelector('#apps tbody tr[data-key]');
          if (!window.__stale && gw && gw.textContent.includes('disconnected') && app && app.classList.contains('stale'))
            window.__stale = Date.now();
        };
        new MutationObserver(check).observe(document.querySelector('main'), {childList: true, subtree: true, attributes: true});
        """
    )
    _, listed = fleet.api("GET", "/api/v1/applications?limit=1")
    since = listed["lastEventId"]
    stopped_at = time.time() * 1000
    fleet.stop_gateway()
    seen = wait_until("the page shows the gateway disconnected", lambda: driver.execute_script("return window.__stale"), every=0.02)
    # When the hub itself saw the disconnect, from its change feed.
    status, gone = fleet.api("GET", f"/api/v1/gateways/{gateway_id(fleet)}")
    assert status == 200 and gone["connected"] is False
    disconnected_at = _disconnect_time(fleet, since)
    print(
        f"gateway shown disconnected {seen - disconnected_at:.0f} ms after the hub saw it go "
        f"({seen - stopped_at:.0f} ms after SIGTERM)"
    )
    assert seen - disconnected_at < 1000
    # Read at one instant: the tables keep re-rendering with the feed.
    gateway_badge, stale_rows = driver.execute_script(
        """
        const b = document.querySelector('#gateways tbody tr .badge.stale');
        return [b && b.textContent, document.querySelectorAll('#apps tbody tr.stale .badge.stale').length];
        """
    )
    assert gateway_badge == "stale"
    assert stale_rows == 50
    shot(driver, "disconnected.png")


def _disconnect_time(fleet, since):
    """The time of the gateway.disconnected event after `since`, in Unix ms."""
    req = urllib.request.Request(
        f"{fleet.url}/api/v1/events?since={since}&types=gateway.disconnected&format=ndjson",
        headers={"Authorization": f"Bearer {fleet.admin_token}"},
    )
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        line = r.readline().decode()
    event = json.loads(line)
    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
    return at.timestamp() * 1000
