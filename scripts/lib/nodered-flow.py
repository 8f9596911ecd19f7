# The Node-RED flow the peer benchmarks run: one modbus-client and one
# modbus-read node per simulated machine (20 holding registers from 0, every
# second), every reply counted by one function node, the count served at
# GET /count. Node ids are prefixed: Node-RED takes any property equal to a
# node id as a reference to it.
#
#   python3 scripts/lib/nodered-flow.py MACHINES BASE_PORT [BROKER_PORT] > flows.json
#
# With BROKER_PORT (bench-poll's BENCH_UPLINK=1) every reply also goes, as
# {"at": <ms since the epoch when the reply arrived>, "m": <machine>,
# "values": [...]}, to `nodered/m/<machine>` at QoS 1 on that local broker
# (Node-RED's own mqtt out node, in memory, no buffer): the subscriber takes
# the read -> subscriber latency from "at" as it does from linegate's "ts".
import json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
broker = int(sys.argv[3]) if len(sys.argv) > 3 else None
flow = [{"id": "id-tab", "type": "tab", "label": "bench"},
        {"id": "id-count", "type": "function", "z": "id-tab", "name": "count",
         "func": "global.set('n', (global.get('n') || 0) + 1); return null;",
         "outputs": 1, "wires": [[]]},
        {"id": "id-get", "type": "http in", "z": "id-tab", "url": "/count", "method": "get",
         "wires": [["id-reply"]]},
        {"id": "id-reply", "type": "function", "z": "id-tab",
         "func": "msg.payload = String(global.get('n') || 0); return msg;",
         "outputs": 1, "wires": [["id-res"]]},
        {"id": "id-res", "type": "http response", "z": "id-tab", "wires": []}]
for i in range(n):
    flow.append({"id": f"id-c{i}", "type": "modbus-client", "name": f"m{i}", "clienttype": "tcp",
                 "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
                 "tcpHost": "127.0.0.1", "tcpPort": str(port + i), "tcpType": "DEFAULT",
                 "unit_id": "1", "commandDelay": "1", "clientTimeout": "1000",
                 "reconnectOnTimeout": True, "reconnectTimeout": "2000",
                 "parallelUnitIdsAllowed": True})
    flow.append({"id": f"id-r{i}", "type": "modbus-read", "z": "id-tab", "name": f"m{i}",
                 "showStatusActivities": False, "logIOActivities": False, "showErrors": True,
                 "unitid": "1", "dataType": "HoldingRegister", "adr": "0", "quantity": "20",
                 "rate": "1", "rateUnit": "s", "delayOnStart": False, "startDelayTime": "",
                 "server": f"id-c{i}", "useIOFile": False, "ioFile": "", "useIOForPayload": False,
                 "wires": [["id-count"] + (["id-stamp"] if broker else []), []]})
if broker:
    flow += [{"id": "id-stamp", "type": "function", "z": "id-tab", "name": "stamp",
              "func": "const at = Date.now(); const m = msg.topic || '';"
                      " msg.topic = 'nodered/m/' + m;"
                      " msg.payload = JSON.stringify({at: at, m: m, values: msg.payload}); return msg;",
              "outputs": 1, "wires": [["id-mqout"]]},
             {"id": "id-mqout", "type": "mqtt out", "z": "id-tab", "name": "", "topic": "",
              "qos": "1", "retain": "false", "broker": "id-broker", "wires": []},
             {"id": "id-broker", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
              "port": str(broker), "clientid": "nodered-bench", "autoConnect": True,
              "usetls": False, "protocolVersion": "4", "keepalive": "60",
              "cleansession": True}]
print(json.dumps(flow))
