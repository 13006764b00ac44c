import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  cliHost,
  connectionUrl,
  credentialKinds,
  defaultAddress,
  defaultTopic,
  formatLabels,
  mosquittoCommand,
  mqttxCommand,
  parseLabels,
  principalName,
  protocolName,
  ruleApplies,
  shellQuote,
  shellQuoteAlways,
  snippetNotes,
  snippets,
  urlHost,
  userinfo,
  forListeners,
  listenerOverrides,
  wsPath,
  type BrokerAddress,
} from "../src/lib/snippets.js";

const addr: BrokerAddress = { host: "broker.example", tcpPort: 1883, tlsPort: 8883, wsPort: 8080, wssPort: 8443, wsPath: "/mqtt", topic: "devices/s1/telemetry" };
const creds = { clientId: "s1", username: "sensor", password: "pa55" };

describe("shellQuote", () => {
  it("leaves safe words as they are", () => {
    assert.equal(shellQuote("sensor-1"), "sensor-1");
    assert.equal(shellQuote("devices/s1/telemetry"), "devices/s1/telemetry");
    assert.equal(shellQuote("a@b:c,d=e+f%g.h_i"), "a@b:c,d=e+f%g.h_i");
  });
  it("single-quotes everything else, including the empty word", () => {
    assert.equal(shellQuote(""), "''");
    assert.equal(shellQuote("a b"), "'a b'");
    assert.equal(shellQuote("sensors/#"), "'sensors/#'");
    assert.equal(shellQuote("$HOME `x` \\ \"q\" !*?"), "'$HOME `x` \\ \"q\" !*?'");
  });
  it("writes a single quote as '\\''", () => {
    assert.equal(shellQuote("it's"), "'it'\\''s'");
    assert.equal(shellQuoteAlways("'"), "''\\'''");
    assert.equal(shellQuoteAlways("abc"), "'abc'");
  });
  it("round-trips through a POSIX shell", async () => {
    const { execFileSync } = await import("node:child_process");
    const nasty = "p'a\"s$s `w` \\ o\nr!d #*? ;|&";
    const out = execFileSync("sh", ["-c", `printf %s ${shellQuoteAlways(nasty)}`], { encoding: "utf8" });
    assert.equal(out, nasty);
    const out2 = execFileSync("sh", ["-c", `printf %s ${shellQuote("it's a/b")}`], { encoding: "utf8" });
    assert.equal(out2, "it's a/b");
  });
});

describe("hosts and paths", () => {
  it("brackets IPv6 literals in URLs only", () => {
    assert.equal(urlHost("::1"), "[::1]");
    assert.equal(urlHost("[::1]"), "[::1]");
    assert.equal(urlHost("example.com"), "example.com");
    assert.equal(cliHost("[::1]"), "::1");
    assert.equal(cliHost("10.0.0.1"), "10.0.0.1");
  });
  it("gives WebSocket paths a leading slash", () => {
    assert.equal(wsPath("mqtt"), "/mqtt");
    assert.equal(wsPath("/mqtt"), "/mqtt");
    assert.equal(wsPath(""), "/");
  });
  it("defaults to the documented listener ports", () => {
    const a = defaultAddress("", "a/b#");
    assert.equal(a.host, "localhost");
    assert.deepEqual([a.tcpPort, a.tlsPort, a.wsPort, a.wssPort, a.wsPath], [1883, 8883, 8080, 8443, "/mqtt"]);
    assert.equal(a.topic, "devices/a_b_/telemetry");
    assert.equal(defaultTopic(""), "devices/device/telemetry");
  });
});

describe("connection strings", () => {
  it("builds the four schemes", () => {
    assert.equal(connectionUrl("mqtt", creds, addr), "mqtt://sensor:pa55@broker.example:1883");
    assert.equal(connectionUrl("mqtts", creds, addr), "mqtts://sensor:pa55@broker.example:8883");
    assert.equal(connectionUrl("ws", creds, addr), "ws://sensor:pa55@broker.example:8080/mqtt");
    assert.equal(connectionUrl("wss", creds, addr), "wss://sensor:pa55@broker.example:8443/mqtt");
  });
  it("percent-encodes the user name and password", () => {
    const c = { clientId: "x", username: "a b@c:d", password: "p@ss:w/o#r?d%" };
    assert.equal(userinfo(c.username, c.password), "a%20b%40c%3Ad:p%40ss%3Aw%2Fo%23r%3Fd%25@");
    const u = new URL(connectionUrl("mqtt", c, addr));
    assert.equal(decodeURIComponent(u.username), "a b@c:d");
    assert.equal(decodeURIComponent(u.password), "p@ss:w/o#r?d%");
    assert.equal(u.hostname, "broker.example");
    assert.equal(u.port, "1883");
  });
  it("omits what is not there", () => {
    assert.equal(connectionUrl("mqtt", { clientId: "x" }, addr), "mqtt://broker.example:1883");
    assert.equal(connectionUrl("mqtt", { clientId: "x", username: "u" }, addr), "mqtt://u@broker.example:1883");
    assert.equal(connectionUrl("mqtt", { clientId: "x", password: "p" }, addr), "mqtt://:p@broker.example:1883");
    assert.equal(connectionUrl("wss", { clientId: "x" }, { ...addr, host: "::1", wsPath: "ws" }), "wss://[::1]:8443/ws");
  });
});

describe("command lines", () => {
  it("mosquitto_pub and mosquitto_sub over TCP", () => {
    assert.equal(
      mosquittoCommand("pub", creds, addr, false),
      "mosquitto_pub -h broker.example -p 1883 -i s1 -u sensor -P 'pa55' -t devices/s1/telemetry -m 'hello'",
    );
    assert.equal(mosquittoCommand("sub", creds, addr, false), "mosquitto_sub -h broker.example -p 1883 -i s1 -u sensor -P 'pa55' -t devices/s1/telemetry -v");
  });
  it("mosquitto over TLS with the CA, and the client certificate when the device has one", () => {
    assert.equal(
      mosquittoCommand("pub", creds, addr, true),
      "mosquitto_pub -h broker.example -p 8883 --cafile ca.crt -i s1 -u sensor -P 'pa55' -t devices/s1/telemetry -m 'hello'",
    );
    assert.equal(
      mosquittoCommand("sub", { clientId: "s1", certIdentity: "CN=s1" }, addr, true),
      "mosquitto_sub -h broker.example -p 8883 --cafile ca.crt --cert device.crt --key device.key -i s1 -t devices/s1/telemetry -v",
    );
  });
  it("quotes odd client ids, user names, passwords and topics", () => {
    const c = { clientId: "dev 1", username: "o'brien", password: "it's $x" };
    assert.equal(
      mosquittoCommand("pub", c, { ...addr, topic: "a/+/#" }, false),
      "mosquitto_pub -h broker.example -p 1883 -i 'dev 1' -u 'o'\\''brien' -P 'it'\\''s $x' -t 'a/+/#' -m 'hello'",
    );
  });
  it("strips IPv6 brackets for -h", () => {
    assert.match(mosquittoCommand("pub", creds, { ...addr, host: "[::1]" }, false), /^mosquitto_pub -h ::1 -p 1883 /);
  });
  it("MQTTX over WebSocket with the listener path", () => {
    assert.equal(
      mqttxCommand("pub", creds, addr, false),
      "mqttx pub -h broker.example -p 8080 -l ws --path /mqtt -i s1 -u sensor -P 'pa55' -t devices/s1/telemetry -m 'hello'",
    );
    assert.equal(
      mqttxCommand("sub", creds, addr, true),
      "mqttx sub -h broker.example -p 8443 -l wss --path /mqtt --ca ca.crt -i s1 -u sensor -P 'pa55' -t devices/s1/telemetry",
    );
  });
});

describe("snippets", () => {
  it("gives TCP, TLS, WebSocket and URL examples for a password device", () => {
    const s = snippets(creds, addr);
    assert.deepEqual(
      s.map((x) => x.id),
      ["tcp-pub", "tcp-sub", "tls-pub", "tls-sub", "ws-pub", "wss-pub", "url-mqtt", "url-mqtts", "url-ws", "url-wss"],
    );
    assert.ok(s.every((x) => x.text.length > 0 && x.title.length > 0));
    assert.equal(new Set(s.map((x) => x.title)).size, s.length, "titles are unique (they label the copy buttons)");
  });
  it("gives only TLS examples for a certificate-only device", () => {
    const s = snippets({ clientId: "c", certIdentity: "CN=c" }, addr);
    assert.deepEqual(
      s.map((x) => x.id),
      ["tls-pub", "tls-sub", "wss-pub", "url-mqtts", "url-wss"],
    );
  });
  it("warns about passwords without a user name", () => {
    assert.ok(snippetNotes({ clientId: "x", password: "p" }).some((n) => n.includes("no user name")));
    assert.ok(!snippetNotes(creds).some((n) => n.includes("no user name")));
    assert.ok(snippetNotes({ clientId: "x", certIdentity: "CN=x" }).some((n) => n.includes("certificate")));
  });
});

describe("labels", () => {
  it("parses key=value lines, trimming and skipping blank lines", () => {
    const r = parseLabels(" site = berlin \n\nfloor=3\nurl=http://x/?a=b\nempty=\n");
    assert.deepEqual(r.errors, []);
    assert.deepEqual(r.labels, { site: "berlin", floor: "3", url: "http://x/?a=b", empty: "" });
  });
  it("reports bad lines with their numbers", () => {
    const r = parseLabels("ok=1\nnovalue\nbad key=2\nok=3\n" + "k=" + "x".repeat(257));
    assert.deepEqual(r.errors, [
      "line 2: expected key=value",
      'line 3: the key must be 1 to 64 letters, digits, ".", "_", "-" or "/"',
      'line 4: the key "ok" is given twice',
      "line 5: the value is longer than 256 bytes",
    ]);
  });
  it("limits the count to 32", () => {
    const text = Array.from({ length: 33 }, (_, i) => `k${i}=v`).join("\n");
    assert.deepEqual(parseLabels(text).errors, ["at most 32 labels (33 given)"]);
  });
  it("formats labels sorted by key and round-trips", () => {
    const labels = { b: "2", a: "x=y" };
    assert.equal(formatLabels(labels), "a=x=y\nb=2");
    assert.deepEqual(parseLabels(formatLabels(labels)).labels, { a: "x=y", b: "2" });
    assert.equal(formatLabels(null), "");
  });
});

describe("device facts", () => {
  it("names credential kinds", () => {
    assert.deepEqual(credentialKinds({ has_password: true, has_scram: true, cert_identity: "CN=a" }), ["password", "SCRAM", "certificate"]);
    assert.deepEqual(credentialKinds({ has_password: false, has_scram: false, cert_identity: null }), []);
  });
  it("names protocol levels", () => {
    assert.equal(protocolName(3), "MQTT 3.1");
    assert.equal(protocolName(4), "MQTT 3.1.1");
    assert.equal(protocolName(5), "MQTT 5");
  });
  it("matches ACL rule subjects like the broker", () => {
    assert.equal(principalName({ client_id: "c", username: null }), "c");
    assert.equal(principalName({ client_id: "c", username: "u" }), "u");
    assert.ok(ruleApplies({ client_id: null, username: null }, "c", "u"));
    assert.ok(ruleApplies({ client_id: "c" }, "c", "u"));
    assert.ok(ruleApplies({ username: "u" }, "c", "u"));
    assert.ok(ruleApplies({ client_id: "c", username: "u" }, "c", "u"));
    assert.ok(!ruleApplies({ client_id: "c", username: "v" }, "c", "u"));
    assert.ok(!ruleApplies({ client_id: "d" }, "c", "u"));
  });
});

it("the broker's listeners replace the default ports and path", () => {
  const o = listenerOverrides([
    { kind: "tcp", port: 11883 },
    { kind: "tcp", port: 11884 },
    { kind: "ws", port: 9001, path: "/ws" },
  ]);
  assert.deepEqual(o, { tcpPort: 11883, wsPort: 9001, wsPath: "/ws" }, "the first of each kind; no tls/wss listener, no override");
  assert.deepEqual(listenerOverrides([{ kind: "wss", port: 8443, path: "/mqtt" }]), { wssPort: 8443, wsPath: "/mqtt" });
});

it("examples are kept for the listener kinds the broker runs", () => {
  const creds = { clientId: "d", username: "u", password: "p" };
  const all = snippets(creds, defaultAddress("h", "d"));
  assert.deepEqual(
    forListeners(all, ["tcp"]).map((s) => s.id),
    ["tcp-pub", "tcp-sub", "url-mqtt"],
  );
  assert.equal(forListeners(all, null).length, all.length, "unknown kinds: every example");
  assert.ok(forListeners(all, ["tcp", "wss"]).some((s) => s.id === "url-wss"));
});
