"""Bindery's AMQP terminal with pika, RabbitMQ's Python client, unmodified.

Usage: interop_pika.py AMQP_HOST AMQP_PORT HTTP_HOST HTTP_PORT MQTT_HOST MQTT_PORT
Prints one line per check and a closing "N passed, M failed" line; exits
non-zero on any failure. Needs mosquitto_pub/mosquitto_sub for the MQTT
crossings.
"""
import socket
import subprocess
import sys
import time
import traceback
import urllib.request

import pika
import pika.exceptions

HOST, PORT = sys.argv[1], int(sys.argv[2])
HTTP = f"http://{sys.argv[3]}:{sys.argv[4]}"
MQTT_HOST, MQTT_PORT = sys.argv[5], sys.argv[6]
results = []


def check(name):
    def run(f):
        try:
            f()
            results.append(True)
            print(f"ok   pika: {name}", flush=True)
        except Exception as e:  # a failed check names what went wrong
            results.append(False)
            print(f"FAIL pika: {name}: {e!r}", flush=True)
            traceback.print_exc()
        return f
    return run


def connect(**kw):
    return pika.BlockingConnection(pika.ConnectionParameters(
        HOST, PORT, credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=3, retry_delay=0.2, socket_timeout=5, blocked_connection_timeout=10, **kw))


def get(ch, queue, tries=50, auto_ack=False):
    for _ in range(tries):
        m = ch.basic_get(queue, auto_ack=auto_ack)
        if m[0] is not None:
            return m
        time.sleep(0.05)
    raise AssertionError(f"nothing in {queue}")


conn = connect()


@check("publish and basic.get with properties, then ack")
def _():
    ch = conn.channel()
    ch.queue_declare("pika-props")
    props = pika.BasicProperties(content_type="text/plain", message_id="m-1", correlation_id="c-1",
                                 reply_to="back", delivery_mode=2, headers={"colour": "blue", "n": 3})
    ch.basic_publish("", "pika-props", b"hello", props)
    method, p, body = get(ch, "pika-props")
    assert body == b"hello", body
    assert (p.content_type, p.message_id, p.correlation_id, p.reply_to, p.delivery_mode) == \
        ("text/plain", "m-1", "c-1", "back", 2), p
    assert p.headers["colour"] in ("blue", b"blue") and str(p.headers["n"]) in ("3", "b'3'"), p.headers
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get("pika-props")[0] is None
    ch.close()


@check("publisher confirms: acked once kept; mandatory to nowhere comes back")
def _():
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("pika-confirm")
    for i in range(20):
        ch.basic_publish("", "pika-confirm", f"c{i}".encode())  # raises NackError on a nack
    try:
        ch.basic_publish("amq.topic", "nobody.listens.here", b"x", mandatory=True)
        raise AssertionError("no basic.return")
    except pika.exceptions.UnroutableError:
        pass
    n = 0
    while ch.basic_get("pika-confirm", auto_ack=True)[0] is not None:
        n += 1
    assert n == 20, n
    ch.close()


@check("basic.consume with prefetch 2: at most 2 unacked, all delivered once acked")
def _():
    ch = conn.channel()
    ch.queue_declare("pika-prefetch")
    for i in range(10):
        ch.basic_publish("", "pika-prefetch", str(i).encode())
    ch.basic_qos(prefetch_count=2)
    seen, most = [], [0]
    unacked = []

    def on(c, m, p, body):
        unacked.append(m.delivery_tag)
        most[0] = max(most[0], len(unacked))
        seen.append(body)

    tag = ch.basic_consume("pika-prefetch", on)
    deadline = time.time() + 10
    while len(seen) < 10 and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
        while unacked:
            ch.basic_ack(unacked.pop(0))
    ch.basic_cancel(tag)
    assert seen == [str(i).encode() for i in range(10)], seen
    assert most[0] <= 2, most
    ch.close()


@check("nack with requeue redelivers (redelivered set); reject without requeue drops")
def _():
    ch = conn.channel()
    ch.queue_declare("pika-nack")
    ch.basic_publish("", "pika-nack", b"again")
    m, _, _ = get(ch, "pika-nack")
    assert not m.redelivered
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _, body = get(ch, "pika-nack")
    assert m.redelivered and body == b"again", (m, body)
    ch.basic_reject(m.delivery_tag, requeue=False)
    time.sleep(0.1)
    assert ch.basic_get("pika-nack")[0] is None
    ch.close()


@check("redelivery after a channel closed with an unacked message")
def _():
    a = conn.channel()
    a.queue_declare("pika-drop")
    a.basic_publish("", "pika-drop", b"lost?")
    get(a, "pika-drop")
    a.close()
    b = conn.channel()
    m, _, body = get(b, "pika-drop", auto_ack=True)
    assert m.redelivered and body == b"lost?", (m, body)
    b.close()


@check("consumers on many channels each get their own queue")
def _():
    chans = [conn.channel() for _ in range(5)]
    got = {}
    for i, ch in enumerate(chans):
        ch.queue_declare(f"pika-many-{i}")
        ch.basic_publish("", f"pika-many-{i}", f"to {i}".encode())
        ch.basic_consume(f"pika-many-{i}", lambda c, m, p, b, i=i: (got.__setitem__(i, b), c.basic_ack(m.delivery_tag)))
    deadline = time.time() + 10
    while len(got) < 5 and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert got == {i: f"to {i}".encode() for i in range(5)}, got
    for ch in chans:
        ch.close()


@check("passive declare of a missing queue: channel closed 404 naming it")
def _():
    ch = conn.channel()
    try:
        ch.queue_declare("pika-missing-queue", passive=True)
        raise AssertionError("declared")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404 and "pika-missing-queue" in e.reply_text, e


@check("amq.topic: a server-named exclusive queue fed by HTTP, MQTT and AMQP publishes")
def _():
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-"), q
    ch.queue_bind(q, "amq.topic", "cross.*.t")
    time.sleep(0.2)
    urllib.request.urlopen(urllib.request.Request(f"{HTTP}/topics/cross/http/t", data=b"from http", method="POST"), timeout=5)
    subprocess.run(["mosquitto_pub", "-h", MQTT_HOST, "-p", MQTT_PORT, "-t", "cross/mqtt/t", "-q", "1", "-m", "from mqtt"],
                   check=True, timeout=10)
    ch.basic_publish("amq.topic", "cross.amqp.t", b"from amqp")
    got = {}
    for _ in range(3):
        m, _, body = get(ch, q, auto_ack=True)
        got[m.routing_key] = body
    assert got == {"cross.http.t": b"from http", "cross.mqtt.t": b"from mqtt", "cross.amqp.t": b"from amqp"}, got
    ch.close()


@check("amq.topic publish reaches mosquitto_sub")
def _():
    sub = subprocess.Popen(["mosquitto_sub", "-h", MQTT_HOST, "-p", MQTT_PORT, "-t", "tomqtt/#", "-C", "1", "-v", "-W", "10"],
                           stdout=subprocess.PIPE)
    try:
        time.sleep(0.5)
        ch = conn.channel()
        ch.basic_publish("amq.topic", "tomqtt.a.b", b"hi mqtt")
        out, _ = sub.communicate(timeout=15)
        assert out.decode().strip() == "tomqtt/a/b hi mqtt", out
        ch.close()
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


@check("malformed frames close that connection only; others are served")
def _():
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    s.recv(4096)  # connection.start
    s.sendall(b"\x01\x00\x00\xff\xff\xff\xff" + b"junk")  # a method frame far over frame_max
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert b"FRAME_ERROR" in data, data
    ch = conn.channel()
    ch.queue_declare("pika-after")
    ch.basic_publish("", "pika-after", b"still here")
    assert get(ch, "pika-after", auto_ack=True)[2] == b"still here"
    ch.close()


conn.close()
passed = sum(results)
print(f"interop-pika: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
