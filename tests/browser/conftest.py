"""Fixtures of the browser tests: a real hub, Argo CD simulator and gateway as processes, and a
headless Chromium driven through Debian's chromedriver. Run through tests/browser/run.sh."""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

BIN = os.environ.get("ARGOCD_GATEWAY_BIN", "target/debug/argocd-gateway")
SIM_BIN = os.environ.get("BROWSER_SIM_BIN", "target/debug/examples/browser-sim")
SCREENSHOTS = os.environ.get("SCREENSHOTS", "target/browser-screenshots")
APPS = int(os.environ.get("BROWSER_APPS", "10000"))
WEB_URL = "https://argocd.example.test/"
# Generous bounds for things that must happen: they fail a broken build, not a busy machine.
WAIT = 60


_NEXT_PORT = itertools.count()


def free_port():
    """A free port below the kernel's ephemeral range (see tests/support/ports.rs for why)."""
    low, high = 10_000, 32_768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = min(high, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    span = high - low
    if span > 1_000:
        offset = (os.getpid() * 7_919) % span
        for _ in range(span):
            port = low + (offset + next(_NEXT_PORT)) % span
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, token=None, body=None, headers=None):
    """A JSON request; returns (status, parsed body or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def wait_until(what, check, timeout=WAIT, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)


class Fleet:
    """The system under test: simulator, hub and (started by a test) gateway."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = {}
        self.logs = {}
        self.gateway = None

    def spawn(self, name, args, **kw):
        log = open(os.path.join(SCREENSHOTS, f"{name}.log"), "w")
        self.logs[name] = log
        p = subprocess.Popen(args, stdout=kw.pop("stdout", log), stderr=log, **kw)
        self.procs[name] = p
        return p

    def start(self):
        sim = self.spawn(
            "simulator",
            [SIM_BIN, "--apps", str(APPS), "--dir", self.tmp],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        line = sim.stdout.readline().decode()
        if not line:
            raise RuntimeError("the simulator did not start; see simulator.log")
        info = json.loads(line)
        self.sim_url, self.sim_token_file, self.control = info["url"], info["tokenFile"], info["control"]
        self.grpc_port, self.http_port = free_port(), free_port()
        self.hub_dir = os.path.join(self.tmp, "hub")
        self.spawn(
            "hub",
            [BIN, "hub", "serve", "--data-dir", self.hub_dir,
             "--grpc-addr", f"127.0.0.1:{self.grpc_port}", "--http-addr", f"127.0.0.1:{self.http_port}",
             "--hostname", "localhost", "--hostname", "127.0.0.1", "--health-check-interval", "1h"],
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        wait_until("the hub answers", lambda: self._healthy())
        self.admin_token_file = os.path.join(self.hub_dir, "admin-token")
        with open(self.admin_token_file) as f:
            self.admin_token = f.read().strip()
        status, tok = self.api("POST", "/api/v1/registration-tokens", {"name": "browser-gw", "environments": ["staging"]})
        assert status == 201, tok
        self.registration = tok

    def _healthy(self):
        try:
            return http("GET", self.url + "/healthz")[0] == 200
        except OSError:
            return False

    def api(self, method, path, body=None, token=None):
        return http(method, self.url + path, token or self.admin_token, body)

    def sim(self, method, path, body=None):
        return http(method, self.control + path, None, body)

    def start_gateway(self):
        self.gateway = self.spawn(
            "gateway",
            [BIN, "run", "--hub-url", f"https://localhost:{self.grpc_port}",
             "--hub-ca-fingerprint", self.registration["caFingerprint"],
             "--registration-token", self.registration["token"],
             "--identity", f"file:{os.path.join(self.tmp, 'identity.json')}",
             "--argocd-server", self.sim_url, "--argocd-plaintext",
             "--argocd-token-file", self.sim_token_file,
             "--admin-addr", f"127.0.0.1:{free_port()}",
             "--argocd-web-url", WEB_URL],
        )

    def stop_gateway(self):
        self.gateway.send_signal(signal.SIGTERM)
        self.gateway.wait(timeout=WAIT)

    def cli(self, *args):
        out = subprocess.run(
            [BIN, "hub", *args, "--hub-api", self.url, "--admin-token-file", self.admin_token_file],
            capture_output=True, text=True, timeout=WAIT,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def stop(self):
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for log in self.logs.values():
            log.close()


@pytest.fixture(scope="session")
def fleet():
    os.makedirs(SCREENSHOTS, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="agw-browser-")
    f = Fleet(tmp)
    try:
        f.start()
        yield f
    finally:
        f.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def driver():
    profile = tempfile.mkdtemp(prefix="agw-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        # Without these Chromium reaches out to Google services, which this machine refuses.
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
        "--window-size=1440,1100",
    ]:
        options.add_argument(a)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"),
        log_output=os.path.join(SCREENSHOTS, "chromedriver.log"),
    )
    d = webdriver.Chrome(service=service, options=options)
    d.set_script_timeout(60)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def wait(driver):
    # The page re-renders live: an element read a moment ago may be gone; ask again.
    return WebDriverWait(driver, WAIT, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
