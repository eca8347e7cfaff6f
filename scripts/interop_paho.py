"""Round trips through Bindery's MQTT terminal with the Eclipse Paho client.

Usage: interop_paho.py HOST PORT
Prints one line per check and a closing "N passed, M failed" line; exits
non-zero on any failure.
"""
import queue
import socket
import sys
import time

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1], int(sys.argv[2])
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} paho: {name}{': ' + detail if detail and not ok else ''}", flush=True)


def client(cid, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, **kw)
    got = queue.Queue()
    c.on_message = lambda _c, _u, m: got.put(m)
    return c, got


def connect(c, keepalive=30):
    c.connect(HOST, PORT, keepalive)
    c.loop_start()
    time.sleep(0.2)


sub, got = client("paho-sub")
connect(sub)
sub.subscribe("paho/#", qos=2)
time.sleep(0.3)
pub, _ = client("paho-pub")
connect(pub)
for qos in (0, 1, 2):
    info = pub.publish(f"paho/q{qos}", f"qos{qos}".encode(), qos=qos)
    info.wait_for_publish(5)
    try:
        m = got.get(timeout=5)
        check(f"QoS {qos} round trip", m.topic == f"paho/q{qos}" and m.payload == f"qos{qos}".encode() and m.qos == qos,
              f"{m.topic} {m.payload!r} qos {m.qos}")
    except queue.Empty:
        check(f"QoS {qos} round trip", False, "nothing arrived")

pub.publish("paho/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
time.sleep(0.3)
late, late_got = client("paho-late")
connect(late)
late.subscribe("paho/retained", qos=1)
try:
    m = late_got.get(timeout=5)
    check("retained message to a later subscriber", m.retain and m.payload == b"kept", f"retain={m.retain} {m.payload!r}")
except queue.Empty:
    check("retained message to a later subscriber", False, "nothing arrived")

w, _ = client("paho-will")
w.will_set("paho/will", b"gone", qos=1)
w.connect(HOST, PORT, 30)
w.loop(timeout=1.0)
w.socket().close()  # no DISCONNECT: the will must be sent
deadline = time.time() + 5
seen = False
while time.time() < deadline and not seen:
    try:
        m = got.get(timeout=0.5)
        seen = m.topic == "paho/will" and m.payload == b"gone"
    except queue.Empty:
        pass
check("will on abnormal disconnect", seen)

for c in (sub, pub, late):
    c.loop_stop()
    c.disconnect()
passed = sum(results)
print(f"interop-paho: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
