"""An independent Sparkplug B host for linegate's tests, built on pysparkplug.

It subscribes to spBv1.0/# on the broker given, decodes every message with
pysparkplug (aliases of DDATA resolved from the DBIRTH it saw, exactly as a
host does), and writes one JSON line per message to the log file. It knows
nothing of linegate: the Rust tests read the log and check the protocol.

Commands, one per line on stdin:
  state online|offline   publish this host's STATE (Sparkplug 3.0 JSON, retained)
  rebirth GROUP NODE     NCMD Node Control/Rebirth = true
  dcmd GROUP NODE DEVICE METRIC VALUE   a DCMD write (linegate must refuse it)
  quit
Lines written: {"kind": "ready"} once subscribed, then one per message.
"""

import argparse
import datetime
import json
import sys
import threading
import time

import paho.mqtt.client as paho_mqtt
from pysparkplug import DataType, Message, Metric, NCmd, DCmd, Topic, MessageType

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--host-id", default=None)
    args = ap.parse_args()

    log = open(args.log, "a", buffering=1)
    lock = threading.Lock()
    births = {}
    online = {"want": None}

    def write(obj):
        with lock:
            try:
                text = json.dumps(obj)
            except (TypeError, ValueError) as e:
                text = json.dumps({"error": f"unloggable message: {e}", "topic": obj.get("topic")})
            log.write(text + "\n")

    client = paho_mqtt.Client(client_id=f"pysparkplug-host-{args.port}", clean_session=True)
    if args.host_id:
        client.will_set(f"spBv1.0/STATE/{args.host_id}",
                        json.dumps({"online": False, "timestamp": int(time.time() * 1000)}),
                        qos=1, retain=True)

    def publish_state(is_online):
        client.publish(f"spBv1.0/STATE/{args.host_id}",
                       json.dumps({"online": is_online, "timestamp": int(time.time() * 1000)}),
                       qos=1, retain=True)

    def on_connect(c, _u, _f, rc):
        births.clear()
        c.subscribe("spBv1.0/#", qos=0)
        if online["want"] is not None:
            publish_state(online["want"])
        write({"kind": "ready", "rc": rc, "at": time.time()})

    def on_message(_c, _u, m):
        entry = {"topic": m.topic, "at": time.time(), "retain": bool(m.retain)}
        try:
            topic = Topic.from_str(m.topic)
            key = (topic.group_id, topic.edge_node_id, topic.device_id)
            msg = Message.from_mqtt_message(m, birth=births.get(key))
            kind = str(topic.message_type)
            entry.update({"kind": kind, "group": topic.group_id, "node": topic.edge_node_id,
                          "device": topic.device_id})
            p = msg.payload
            if kind in ("NBIRTH", "DBIRTH"):
                births[key] = p
            if kind == "STATE":
                entry["online"] = p.online
            if hasattr(p, "seq"):
                entry["seq"] = p.seq
            if hasattr(p, "timestamp"):
                entry["timestamp"] = p.timestamp
            metrics = []
            if kind == "NDEATH":
                metrics = [p.bd_seq_metric]
            elif hasattr(p, "metrics"):
                metrics = list(p.metrics)
            out = []
            for x in metrics:
                v = x.value
                if isinstance(v, bytes):
                    v = v.hex()
                elif isinstance(v, datetime.datetime):
                    v = round(v.timestamp() * 1000)
                out.append({"name": x.name, "alias": x.alias, "datatype": int(x.datatype),
                            "datatype_name": x.datatype.name, "value": v,
                            "timestamp": x.timestamp, "is_historical": bool(x.is_historical),
                            "is_null": bool(x.is_null)})
            entry["metrics"] = out
        except Exception as e:  # a message this host cannot decode is a finding
            entry["error"] = f"{type(e).__name__}: {e}"
        write(entry)

    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect("127.0.0.1", args.port, keepalive=5)
    client.loop_start()

    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "quit":
            break
        if parts[0] == "state":
            online["want"] = parts[1] == "online"
            publish_state(online["want"])
        elif parts[0] == "rebirth":
            payload = NCmd(timestamp=int(time.time() * 1000), metrics=(
                Metric(timestamp=int(time.time() * 1000), name="Node Control/Rebirth",
                       datatype=DataType.BOOLEAN, value=True),))
            client.publish(f"spBv1.0/{parts[1]}/NCMD/{parts[2]}",
                           payload.encode(include_dtypes=True), qos=0)
        elif parts[0] == "dcmd":
            payload = DCmd(timestamp=int(time.time() * 1000), metrics=(
                Metric(timestamp=int(time.time() * 1000), name=parts[4],
                       datatype=DataType.UINT16, value=int(parts[5])),))
            client.publish(f"spBv1.0/{parts[1]}/DCMD/{parts[2]}/{parts[3]}",
                           payload.encode(include_dtypes=True), qos=0)
        write({"kind": "command", "line": line.strip(), "at": time.time()})
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
