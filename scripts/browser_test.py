"""Bindery from a real browser: Debian's chromium, headless, driven by
playwright (its own browsers are not used: executable_path).

Usage: browser_test.py BINDERY_BIN MQTT_JS SCREENSHOT

Starts the server (the default configuration on free loopback ports, CORS
allowing the page's origin) and a static server for the page on another
port (another origin), loads the page, and checks that messages cross:
fetch -> EventSource and mqtt.js; mqtt.js (MQTT over WebSocket) ->
EventSource and a native MQTT client (paho); paho and plain HTTP -> both
of the page's; and that EventSource reconnects by itself after the server
closes its stream (the HTTP terminal restarted through the management
API). Keeps a screenshot. Prints one line per check and "N passed, M
failed"; exits non-zero on a failure. Stops everything it started.
"""
import functools
import http.server
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from playwright.sync_api import sync_playwright

BIN, MQTT_JS, SHOT = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
results = []


def check(name, ok, detail=""):
    ok = bool(ok)
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} browser: {name}{': ' + str(detail) if detail and not ok else ''}", flush=True)


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def until(what, timeout=15):
    """Polls `what` until it is true, for at most `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = what()
        if v:
            return v
        time.sleep(0.1)
    return what()


work = tempfile.mkdtemp(prefix="bindery-browser-")
site = os.path.join(work, "site")
os.makedirs(site)
shutil.copy(os.path.join(HERE, "browser", "page.html"), os.path.join(site, "index.html"))
shutil.copy(MQTT_JS, os.path.join(site, "mqtt.min.js"))

# The page's origin: a static server on another port, in this process.
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


handler = functools.partial(Quiet, directory=site)
static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=static.serve_forever, daemon=True).start()
origin = f"http://127.0.0.1:{static.server_address[1]}"

# HTTP on a fixed free port: a restarted instance binds its key again.
http_port = free_port("127.0.0.1")
with open(os.path.join(HERE, "..", "server-main", "src", "default.toml")) as f:
    text = f.read()
for old, new in [("127.0.0.1:8080", f"127.0.0.1:{http_port}"), ("127.0.0.1:1883", "127.0.0.2:0"),
                 ("127.0.0.1:8081", "127.0.0.3:0"), ("127.0.0.1:5672", "127.0.0.7:0"),
                 ("127.0.0.1:8083", "127.0.0.8:0"), ("bindery-data", os.path.join(work, "data"))]:
    text = text.replace(old, new)
text += f'\n[instances.http.config.cors]\nallow_origins = ["{origin}"]\n'
with open(os.path.join(work, "bindery.toml"), "w") as f:
    f.write(text)

server = subprocess.Popen([BIN, "--config", os.path.join(work, "bindery.toml"), "--threads", "2"],
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
addrs = {}
paho = None
try:
    for line in server.stdout:
        m = re.match(r"bindery: (\S+) listening on (\S+)", line)
        if m:
            addrs.setdefault(m.group(1), m.group(2))
        if line.strip() == "bindery: ready":
            break
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    http_base, ws_base = f"http://{addrs['http']}", f"ws://{addrs['mqtt-ws']}"
    mhost, mport = addrs["mqtt"].rsplit(":", 1)
    token = open(os.path.join(work, "data", "manage.token")).read().strip()

    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="native")
    native = queue.Queue()
    subacks = queue.Queue()
    paho.on_message = lambda _c, _u, m: native.put((m.topic, m.payload.decode()))
    paho.on_subscribe = lambda *a: subacks.put(True)
    paho.connect(mhost, int(mport), 30)
    paho.loop_start()
    paho.subscribe("browser/#", qos=1)
    subacks.get(timeout=10)

    def native_got(want):
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                if native.get(timeout=1) == want:
                    return True
            except queue.Empty:
                pass
        return False

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                                          "--no-first-run", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.on("console", lambda msg: print(f"  console: {msg.text}", flush=True))
            page.goto(f"{origin}/index.html?http={http_base}&ws={ws_base}")
            t = lambda: page.evaluate("window.t")
            check("EventSource opens across origins", until(lambda: t()["opens"] >= 1), t())
            check("mqtt.js connects over WebSocket and subscribes", until(lambda: t()["subscribed"]), t())

            def seen(kind, data):
                key = "data" if kind == "sse" else "payload"
                return until(lambda: any(e[key] == data for e in t()[kind]))

            r = page.evaluate("publishHttp('browser/sse', 'from fetch')")
            check("fetch publishes (201, Message-Id readable)", r["status"] == 201 and r["id"], r)
            check("fetch -> EventSource", seen("sse", "from fetch"), t())
            check("fetch -> mqtt.js", seen("mqtt", "from fetch"), t())
            check("fetch -> native MQTT", native_got(("browser/sse", "from fetch")))
            sse_ids = [e["id"] for e in t()["sse"]]
            check("SSE events carry the message id", r["id"] in sse_ids, sse_ids)

            page.evaluate("publishMqtt('browser/sse', 'from mqtt.js')")
            check("mqtt.js -> EventSource", seen("sse", "from mqtt.js"), t())
            check("mqtt.js -> native MQTT", native_got(("browser/sse", "from mqtt.js")))

            paho.publish("browser/sse", "from paho", qos=1)
            check("native MQTT -> EventSource", seen("sse", "from paho"), t())
            check("native MQTT -> mqtt.js", seen("mqtt", "from paho"), t())

            urllib.request.urlopen(urllib.request.Request(
                f"{http_base}/topics/browser/sse", data=b"from curl-like HTTP", method="POST",
                headers={"Content-Type": "text/plain"}), timeout=10)
            check("HTTP -> EventSource", seen("sse", "from curl-like HTTP"), t())
            check("HTTP -> mqtt.js", seen("mqtt", "from curl-like HTTP"), t())

            # The server closes the stream: the HTTP terminal restarts.
            urllib.request.urlopen(urllib.request.Request(
                f"http://{addrs['manage']}/v1/instances/http/restart", data=b"", method="POST",
                headers={"Authorization": f"Bearer {token}"}), timeout=30)
            check("EventSource reconnects by itself after the server closed it",
                  until(lambda: t()["opens"] >= 2, timeout=30), t())
            page.evaluate("publishHttp('browser/sse', 'after reconnect')")
            check("events flow after the reconnect", seen("sse", "after reconnect"), t())
            check("mqtt.js unaffected by the HTTP restart", seen("mqtt", "after reconnect"), t())
            check("mqtt.js saw no error", not t()["errors"], t()["errors"])

            passed = results.count(True)
            page.evaluate(f"log('{passed} of {len(results)} checks passed', "
                          f"'{'ok' if all(results) else 'bad'}')")
            os.makedirs(os.path.dirname(SHOT), exist_ok=True)
            page.screenshot(path=SHOT, full_page=True)
            print(f"  screenshot: {SHOT}", flush=True)
        finally:
            browser.close()
except Exception as e:  # report, then fail below
    check("the run itself", False, repr(e))
finally:
    if paho is not None:
        paho.loop_stop()
        paho.disconnect()
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    static.shutdown()
    shutil.rmtree(work, ignore_errors=True)

print(f"browser: {results.count(True)} passed, {results.count(False)} failed", flush=True)
sys.exit(0 if results and all(results) else 1)
