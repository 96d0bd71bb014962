"""The dashboard's update latency: a transition's record (its ``at``) → its line on
the page in headless chromium, over many transitions.

    .venv/bin/python benchmarks/dashboard_latency.py [--taps 40] [--pace 0.25]

The real runtime and API (embedded engine for the engine's HTTP API, a
controller answering on the real RPC server, as ``benchmarks/decision.py``),
the page open in Debian's chromium (``tests/browser.py``); ``--taps`` new
elephants handed to the runtime one every ``--pace`` seconds, each giving a
``created`` and an ``active`` transition. Prints p50/p95/max of record → line
on the page, and of record → tap row on the page. The anchor, measured in the
same run: record → the same transition read by a plain HTTP client on the
transition stream (what any client of the API sees).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402

import decision  # noqa: E402
from demon.runtime import _Events  # noqa: E402
from tests.browser import Browser, browser_unavailable_reason  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def line(label: str, ms: list[float]) -> str:
    return (f"  {label:<40} p50 {statistics.median(ms):7.1f} ms   p95 {pct(ms, 0.95):7.1f} ms   "
            f"max {max(ms):7.1f} ms   ({len(ms)})")


def follow_stream(url: str, seen: dict[int, float], halt: threading.Event) -> None:
    """A plain SSE client: when each transition arrived (epoch s)."""
    with httpx.Client(timeout=None) as client:
        with client.stream("GET", f"{url}/api/v1/transitions/stream") as resp:
            for raw in resp.iter_lines():
                if halt.is_set():
                    return
                if raw.startswith("id: "):
                    seen[int(raw[4:])] = time.time()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--taps", type=int, default=40, help="new elephants (2 transitions each; at most 90)")
    ap.add_argument("--pace", type=float, default=0.25, help="seconds between them")
    args = ap.parse_args(argv)
    reason = browser_unavailable_reason()
    if reason:
        print(f"dashboard_latency: {reason}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # the SSE client cut off at the end
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pol = decision.policies_dir(root, 10000)
        with decision.live_daemon(pol, root / "state.sqlite", decision.Controller(), api=True) as daemon:
            runtime, url = daemon.runtime, daemon.api_url
            browser = Browser()
            halt = threading.Event()
            streamed: dict[int, float] = {}
            try:
                browser.open(url + "/")
                browser.wait(lambda: browser.js("return document.body.dataset.ready") == "yes", 20)
                browser.wait(lambda: browser.js("return document.getElementById('stream').dataset.state") == "live")
                first = runtime.view.last_id
                threading.Thread(target=follow_stream, args=(url, streamed, halt), daemon=True).start()
                time.sleep(1.0)
                for i in range(min(args.taps, 90)):
                    runtime.submit(_Events([decision.event(i, 100000)]))
                    time.sleep(args.pace)
                time.sleep(2.0)
                records = [t.to_json() for t in runtime.view.transitions_after(first, 1000)]
                shown = browser.js("""return Object.fromEntries([...document.querySelectorAll('#timeline li[data-shown-at]')]
                    .map(li => [li.dataset.id, Number(li.dataset.shownAt) / 1000]));""")
                rows = browser.js("""return Object.fromEntries([...document.querySelectorAll('#taps tbody tr')]
                    .map(tr => [tr.dataset.tapId, Number(tr.dataset.shownAt) / 1000]));""")
                errors = browser.errors()
            finally:
                halt.set()
                browser.quit()
    page = [(shown[str(r["id"])] - r["at"]) * 1000 for r in records if str(r["id"]) in shown]
    created = [(rows[r["tap_id"]] - r["at"]) * 1000 for r in records
               if r["kind"] == "created" and r["tap_id"] in rows]
    anchor = [(streamed[r["id"]] - r["at"]) * 1000 for r in records if r["id"] in streamed]
    print(f"dashboard update latency, {len(records)} transitions of {args.taps} new taps, one every "
          f"{args.pace:g} s (headless chromium, same machine):")
    print(line("anchor: record -> plain SSE client", anchor))
    print(line("record -> its line on the page's timeline", page))
    print(line("created -> the tap's row on the page", created))
    if len(page) != len(records):
        print(f"  {len(records) - len(page)} transition(s) never reached the page")
    if errors:
        print(f"  console errors: {json.dumps(errors)[:500]}")
    return 0 if page and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
