"""The MLflow UI as a person reads a study, checked in a real browser (Chromium, headless).

One finished smoke study (synthetic workload, in-process: a second), its report, and
``orchestrator ui`` on its store; then Chromium, driven through the DevTools protocol, opens
what the printed URL shows and the tests read the rendered DOM text:

* the experiment opens on its runs table (not MLflow 3's GenAI overview);
* the execution's row expands into its nested trial runs, named by their levels and replicate;
* the execution's run page shows the study's question, the share table and the metrics
  ``share.<term>``, ``vc.<component>``, ``p.<term>``;
* the report artifact renders in the UI with every plot loaded;
* the HTML report renders as a file, plots included.

Screenshots of each page are kept under ``tests/artifacts/ui/`` (git-ignored). Without
Chromium (``apt-get install chromium``) the tests are skipped, saying so.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); "
                                               "the browser tests need a real browser to render the MLflow UI"),
]

QUESTION = "Does the precision or the regime move the response, and how much is the init seed?"

STUDY = f'''
from orchestrator import Factor, Study, Variant

study = Study(
    name="ui_smoke",
    description={QUESTION!r},
    workload="synthetic",
    factors=[Factor("precision", ["fp32", "bf16"]), Factor("regime", ["short", "long"])],
    params={{"effects": {{"regime": {{"short": 0.0, "long": 3.0}}, "precision": {{"fp32": 0.0, "bf16": 0.5}}}},
            "noise": {{"init": 0.4}}, "residual_sd": 0.1, "metric_points": 6}},
    seed_streams={{"init": 2}},
    metrics={{"response": "minimize"}},
    replicates=3,
    seed=5,
    variants={{"smoke": Variant(replicates=2), "full": Variant()}},
)
'''


# -- a DevTools-protocol client: the WebSocket side of RFC 6455, enough for text frames ------------------


class _WebSocket:
    def __init__(self, url: str, timeout: float = 60.0):
        hostport, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self._exact(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")

    def send(self, text: str) -> None:
        data = text.encode()
        header = bytearray([0x81])  # FIN, text
        if len(data) < 126:
            header.append(0x80 | len(data))
        elif len(data) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(data))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(data))
        mask = os.urandom(4)  # a client masks every frame
        self.sock.sendall(bytes(header) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            out += chunk
        return bytes(out)

    def recv(self) -> str:
        message = bytearray()
        while True:
            b0, b1 = self._exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(length)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping / pong
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, executable: str, profile: Path, width: int = 1400, height: int = 1000):
        # IsolateSandboxedIframes off: MLflow shows an HTML artifact in a sandboxed iframe, which keeps it in this
        # page's process, so the test reads its DOM through Page.createIsolatedWorld.
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-features=IsolateSandboxedIframes", f"--window-size={width},{height}",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port within 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws = _WebSocket(page["webSocketDebuggerUrl"])
        self._id = 0
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, context: int | None = None) -> Any:
        params: dict[str, Any] = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        result = self.call("Runtime.evaluate", **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, what: str, predicate: Callable[[Any], bool], expression: str = "document.body ? document.body.innerText : ''",
                 context: int | None = None, timeout: float = 60.0) -> Any:
        """Poll ``expression`` until ``predicate`` holds; fail with what the page showed last."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression, context)
            except RuntimeError:
                value = None
            if value is not None and predicate(value):
                return value
            time.sleep(0.25)
        pytest.fail(f"the page never showed {what} within {timeout:.0f} s; it showed:\n{str(value)[:3000]}")

    def child_frame_context(self, timeout: float = 60.0) -> int:
        """An execution context in the page's first child frame (once it exists)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tree = self.call("Page.getFrameTree")["frameTree"]
            if tree.get("childFrames"):
                frame = tree["childFrames"][0]["frame"]["id"]
                return int(self.call("Page.createIsolatedWorld", frameId=frame, worldName="test")["executionContextId"])
            time.sleep(0.25)
        pytest.fail("the page never showed a child frame (the artifact viewer's iframe)")

    def scroll_to(self, text: str) -> None:
        """Scroll the first element whose own text is ``text`` into view (for the screenshot)."""
        self.evaluate(f"""(() => {{
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (walker.nextNode()) {{
                if (walker.currentNode.textContent.trim() === {json.dumps(text)}) {{
                    walker.currentNode.parentElement.scrollIntoView({{block: "start"}});
                    return true;
                }}
            }}
            return false;
        }})()""")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.sock.close()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this fixture started: the browser and its helpers
        except ProcessLookupError:
            pass
        self.process.wait(10)


# -- the study, its report, the UI, the browser -------------------------------------------------------------

IMAGES = "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"


def _read_lines(stream: Any, out: "queue.Queue[str]") -> None:
    for line in stream:
        out.put(line)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A finished smoke study with its report, and ``orchestrator ui`` serving its store."""
    folder = tmp_path_factory.mktemp("ui_browser")
    study = folder / "ui_smoke.py"
    study.write_text(STUDY)
    uri = f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}"
    runner = CliRunner()
    run = runner.invoke(main, ["run", str(study), "--variant", "smoke", "--tracking-uri", uri, "--in-process", "--no-progress"])
    assert run.exit_code == 0, run.output
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # started before the report is written: the UI reads the store live, and its start overlaps the analysis
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(study), "--tracking-uri", uri, "--port", "0"],
                               cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    errors: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stderr, errors), daemon=True).start()
    browser = None
    base = ""
    try:
        report = runner.invoke(main, ["report", str(study), "--variant", "smoke", "--tracking-uri", uri, "--bootstrap", "0",
                                      "--out", str(folder / "report")])
        assert report.exit_code == 0, report.output
        try:
            first = lines.get(timeout=240)
        except queue.Empty:
            pytest.fail("orchestrator ui printed no URL within 240 s; stderr:\n" + "".join(list(errors.queue)))
        seconds = time.monotonic() - started
        match = re.match(r"MLflow UI: (http://127\.0\.0\.1:(\d+))/#/experiments/(\d+)/runs\?workflowType=machine_learning$", first.strip())
        assert match, first
        base = match.group(1)
        # printed only once the UI serves: its page answers at once
        with urllib.request.urlopen(base + "/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        from orchestrator.records import Records

        records = Records.open(str(study), "smoke", uri)
        df, meta = records.results()
        browser = Chromium(str(CHROMIUM), Path(tempfile.mkdtemp(prefix="chromium-", dir=folder)))
        yield {"url": first.strip().removeprefix("MLflow UI: "), "base": base, "experiment": match.group(3), "meta": meta,
               "df": df, "report": folder / "report" / "report.html", "browser": browser, "ui_seconds": seconds}
    finally:
        if browser is not None:
            browser.close()
        process.send_signal(signal.SIGTERM)  # orchestrator ui stops the server it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    if base:
        with pytest.raises(OSError):  # the server went with it
            urllib.request.urlopen(base + "/health", timeout=5)


def trial_name(row: Any) -> str:
    return f"{row['precision']} {row['regime']} r{int(row['replicate'])}"


def test_the_experiment_opens_on_its_runs_table_and_the_execution_expands_into_its_trials(ui):
    browser = ui["browser"]
    execution = f"execution {ui['meta']['execution_id']}"
    browser.goto(ui["url"])
    text = browser.wait_for("the runs table with the execution", lambda t: execution in t and "matching runs" in t)
    browser.screenshot("1_experiment_runs")
    assert "Run Name" in text and "No data available" not in text  # the runs table, not the GenAI overview's empty charts
    clicked = browser.evaluate(f"""(() => {{
        const cell = Array.from(document.querySelectorAll('[role=gridcell]')).find(c => c.innerText.includes({json.dumps(execution)}));
        const button = cell && cell.querySelector('button');
        if (button) button.click();
        return Boolean(button);
    }})()""")
    assert clicked, "the execution's row has no button to expand its nested runs"
    names = [trial_name(row) for _, row in ui["df"].iterrows()]
    text = browser.wait_for("the nested trial runs", lambda t: sum(name in t for name in names) >= 8)
    browser.screenshot("2_execution_expanded")
    assert f"{len(names) + 1} matching runs" in text


def test_the_execution_run_shows_the_question_the_shares_and_its_metrics(ui):
    browser = ui["browser"]
    meta = ui["meta"]
    browser.goto(f"{ui['base']}/#/experiments/{ui['experiment']}/runs/{meta['parent_run_id']}?workflowType=machine_learning")
    text = browser.wait_for("the run page with its description, metrics and child runs",
                            lambda t: QUESTION in t and "share.regime" in t and "Child runs" in t and "r0" in t)
    browser.screenshot("3_execution_run")
    browser.scroll_to("Description")
    browser.screenshot("3_execution_run_description")
    for key in ("share.regime", "share.precision", "share.seed_init", "share.Residual", "vc.seed_init", "vc.Residual",
                "p.regime", "p.precision", "F.regime"):
        assert re.search(rf"^{re.escape(key)}\s+[-\d.e]+$", text, re.M), f"{key} with its value"
    assert "Largest shares: regime" in text  # the description's headline: the planted regime effect dominates
    share = float(re.search(r"^share\.regime\s+([-\d.e]+)$", text, re.M).group(1))
    assert 0.5 < share <= 1.0
    assert any(trial_name(row) in text for _, row in ui["df"].iterrows())  # the child runs, by readable name


def test_the_report_artifact_renders_with_its_plots(ui):
    browser = ui["browser"]
    meta = ui["meta"]
    browser.goto(f"{ui['base']}/#/experiments/{ui['experiment']}/runs/{meta['parent_run_id']}/artifacts/analysis/report.html"
                 "?workflowType=machine_learning")
    browser.wait_for("the artifact viewer on report.html", lambda t: "analysis/report.html" in t)
    frame = browser.child_frame_context()
    text = browser.wait_for("the report's text in its frame", lambda t: "Shares of variance" in t, context=frame)
    images = browser.wait_for("the report's plots, loaded", lambda v: bool(v) and all(ok for _, ok in v), IMAGES, context=frame)
    browser.screenshot("4_report_artifact")
    assert "ui_smoke: response" in text and "regime" in text
    assert {"variance_shares", "main_effects", "interactions", "cells"} <= {alt for alt, _ in images}


def test_the_html_report_renders_as_a_file(ui):
    browser = ui["browser"]
    browser.goto(ui["report"].as_uri())
    text = browser.wait_for("the report", lambda t: "Shares of variance" in t)
    images = browser.wait_for("the report's plots, loaded", lambda v: bool(v) and all(ok for _, ok in v), IMAGES)
    browser.screenshot("5_report_file")
    assert "ANOVA" in text and "Variance components" in text
    assert {"variance_shares", "main_effects", "interactions", "cells", "curves_loss"} <= {alt for alt, _ in images}
