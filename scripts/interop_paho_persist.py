"""MQTT state across server restarts, seen by the Eclipse Paho client.

Usage: interop_paho_persist.py HOST PORT prepare|verify ROUND
`prepare`: a persistent session (clean_session=False) subscribes at QoS 2
and leaves; a QoS 1 and a QoS 2 message are queued for it and a retained
message is set. `verify` (after the server was restarted, gracefully or
with kill -9): the session is present, the queued messages arrive once
each, the retained one reaches a new subscriber. Prints one line per check
and exits non-zero on any failure.
"""
import queue
import sys
import time

import paho.mqtt.client as mqtt

HOST, PORT, PHASE, ROUND = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
failed = 0


def check(name, ok, detail=""):
    global failed
    failed += 0 if ok else 1
    print(f"{'ok  ' if ok else 'FAIL'} paho ({ROUND}): {name}{': ' + detail if detail and not ok else ''}", flush=True)


def client(cid, clean):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean)
    got = queue.Queue()
    present = queue.Queue()
    c.on_message = lambda _c, _u, m: got.put(m)
    c.on_connect = lambda _c, _u, flags, _rc, _p: present.put(flags.session_present)
    c.connect(HOST, PORT, 30)
    c.loop_start()
    return c, got, present.get(timeout=5)


def done(c):
    c.disconnect()
    c.loop_stop()


if PHASE == "prepare":
    keep, _, _ = client("paho-keep", False)
    keep.subscribe("paho/keep", qos=2)
    time.sleep(0.5)
    done(keep)
    pub, _, _ = client("", True)
    pub.publish("paho/keep", f"q1 {ROUND}".encode(), qos=1).wait_for_publish(5)
    pub.publish("paho/keep", f"q2 {ROUND}".encode(), qos=2).wait_for_publish(5)
    pub.publish("paho/state", f"kept {ROUND}".encode(), qos=1, retain=True).wait_for_publish(5)
    done(pub)
    check("session made, messages queued", True)
else:
    keep, got, present = client("paho-keep", False)
    check("the persistent session is present", present is True, f"session_present={present}")
    payloads = []
    try:
        while len(payloads) < 2:
            payloads.append(got.get(timeout=5).payload.decode())
    except queue.Empty:
        pass
    time.sleep(0.5)
    while not got.empty():
        payloads.append(got.get().payload.decode())
    want = [f"q1 {ROUND}", f"q2 {ROUND}"]
    check("queued QoS 1 and 2 messages arrive once each", sorted(payloads) == want, f"{payloads}")
    done(keep)
    late, late_got, _ = client("", True)
    late.subscribe("paho/state", qos=1)
    try:
        m = late_got.get(timeout=5)
        check("the retained message is kept", m.retain and m.payload == f"kept {ROUND}".encode(),
              f"retain={m.retain} {m.payload!r}")
    except queue.Empty:
        check("the retained message is kept", False, "nothing arrived")
    done(late)
sys.exit(1 if failed else 0)
