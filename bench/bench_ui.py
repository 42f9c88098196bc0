"""Benchmark: how heavy each web UI page is and how soon it renders, over loopback and over a slow link.

    .venv/bin/python bench/bench_ui.py [--runs 5] [--delay-ms 50]

Starts its own daemon (2 declared GPUs, a temporary state directory, a free loopback port), makes
some content (finished jobs with logs, one running job holding a GPU, one waiting), then loads each
page in Debian's headless chromium (Playwright) with a cold cache and the session cookie, and prints
one Markdown table: bytes of the page with its stylesheet and script, time to first contentful paint
and to the load event (medians of --runs loads), directly and through a link with --delay-ms of
added round-trip time.

The added latency comes from a small TCP proxy in this script that holds every chunk for half the
delay in each direction. `tc qdisc ... netem` in a network namespace would be the better tool, but
this machine's kernel has no netem qdisc ("Specified qdisc kind is unknown"), so the proxy stands in
for it; it adds latency only (no bandwidth limit, no packet loss). Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

import benchlib
from benchlib import log

CHROMIUM = "/usr/bin/chromium"
TERMINAL = benchlib.TERMINAL


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that delays each chunk by delay/2 in each direction (order kept)."""

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.half = target_port, delay / 2
        self.port = benchlib.free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((self.loop.time() + self.half, data))
        except ConnectionError:
            pass
        queue.put_nowait((self.loop.time() + self.half, None))
        await sender

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer), return_exceptions=True)


def make_content(d: benchlib.Daemon, token: str) -> dict[str, str]:
    """Jobs to show: a finished one with a log, one holding a GPU, one waiting; returns page paths."""
    s = d.session(token)

    def submit(**spec) -> str:
        resp = s.post(d.api + "/jobs", json=spec, timeout=30)
        resp.raise_for_status()
        return resp.json()["job"]["id"]

    done = submit(command=["sh", "-c", "for i in $(seq 1 200); do echo line $i of a training log; done"], name="finished", time_limit="5m")
    for i in range(5):
        submit(command=["echo", f"job {i}"], gpus=1, time_limit="1m")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and d.query("SELECT COUNT(*) FROM jobs WHERE state NOT IN %s" % str(tuple(TERMINAL)))[0][0]:
        time.sleep(0.5)
    holder = submit(command=["sleep", "600"], gpus=2, time_limit="20m", name="holder")
    while s.get(d.api + f"/jobs/{holder}", timeout=30).json()["job"]["state"] != "running":
        time.sleep(0.3)
    submit(command=["sleep", "1"], gpus=1, time_limit="1m", name="waiting")
    return {"login": "/ui/login", "dashboard": "/ui/", "jobs": "/ui/jobs?all=1", "job": f"/ui/jobs/{done}", "submit": "/ui/jobs/new",
            "usage": "/ui/usage", "admin users": "/ui/admin/users"}


def web_session(url: str, name: str, password: str) -> str:
    """Log in through the form; the session cookie's value."""
    s = requests.Session()
    page = s.get(url + "/ui/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    s.post(url + "/ui/login", data={"csrf": csrf, "name": name, "password": password}, allow_redirects=False, timeout=30).raise_for_status()
    return s.cookies["mlpd_session"]


MEASURE = """() => new Promise(resolve => {
  const done = fcp => {
    const nav = performance.getEntriesByType('navigation')[0];
    const assets = performance.getEntriesByType('resource').filter(r => ['link', 'script', 'css', 'img'].includes(r.initiatorType));
    resolve({bytes: nav.transferSize + assets.reduce((n, r) => n + r.transferSize, 0), assets: assets.length,
             fcp: fcp, load: nav.loadEventEnd});
  };
  new PerformanceObserver(list => {
    const e = list.getEntries().find(p => p.name === 'first-contentful-paint');
    if (e) done(e.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(null), 5000);
})"""


def measure(browser, base: str, path: str, cookie: str | None, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        if cookie and path != "/ui/login":
            host = base.split("//", 1)[1].split(":")[0]
            ctx.add_cookies([{"name": "mlpd_session", "value": cookie, "domain": host, "path": "/", "httpOnly": True, "sameSite": "Lax"}])
        page = ctx.new_page()
        page.goto(base + path, wait_until="load")
        samples.append(page.evaluate(MEASURE))
        ctx.close()
    med = lambda key: statistics.median(s[key] for s in samples if s[key] is not None)  # noqa: E731
    return {"bytes": med("bytes"), "fcp": med("fcp"), "load": med("load"), "assets": samples[0]["assets"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="loads of each page (median reported)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added round-trip time of the slow link")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if benchlib.image_missing():
        log(f"{benchlib.IMAGE} is missing: build it first (mlpd images build --local)")
        return 2
    with tempfile.TemporaryDirectory(prefix="mlpd-bench-ui-") as tmp:
        d = benchlib.Daemon(Path(tmp), config_text='[server]\ncontainer_listen = ""\n', daemon_args=("--declare-gpus", "2"))
        with d.running():
            token = d.add_user("root", admin=True)
            d.token = token
            password = f"pw-{uuid.uuid4().hex}"
            d.session(token).post(d.api + "/users/root/password", json={"password": password}, timeout=30).raise_for_status()
            log("making content (jobs with logs, a GPU holder, a waiting job)")
            pages = make_content(d, token)
            proxy = DelayProxy(d.port, args.delay_ms / 1000)
            rows = [("page", "KB (page + assets)", "assets", "first paint", "load", f"first paint, +{args.delay_ms:.0f} ms RTT",
                     f"load, +{args.delay_ms:.0f} ms RTT")]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
                direct_cookie = web_session(d.url, "root", password)
                slow_url = f"http://127.0.0.1:{proxy.port}"
                for name, path in pages.items():
                    log(f"measuring {name} ({path})")
                    fast = measure(browser, d.url, path, direct_cookie, args.runs)
                    slow = measure(browser, slow_url, path, direct_cookie, args.runs)
                    rows.append((name, f"{fast['bytes'] / 1024:.1f}", str(fast["assets"]), f"{fast['fcp']:.0f} ms", f"{fast['load']:.0f} ms",
                                 f"{slow['fcp']:.0f} ms", f"{slow['load']:.0f} ms"))
                browser.close()
    for i, row in enumerate(rows):
        print("| " + " | ".join(row) + " |")
        if i == 0:
            print("|" + "---|" * len(row))
    print(f"\nMedians of {args.runs} cold-cache loads at 1280x800 in headless chromium, logged in as an admin; "
          f"the slow link is a user-space proxy adding {args.delay_ms:.0f} ms per round trip (no netem here).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
