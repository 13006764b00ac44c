// Pure helpers of the device pages: ready-to-paste connection examples (mosquitto_pub/sub,
// MQTTX for WebSocket, connection strings), label parsing, and credential summaries. No DOM,
// no imports: unit-tested with node's test runner (tests/snippets.test.ts).

/** Where the examples connect to. The admin API does not say which MQTT listeners run, so the
 * defaults are Tern's documented ones (docs/security.md, "Listeners and TLS"). */
export interface BrokerAddress {
  host: string;
  tcpPort: number;
  tlsPort: number;
  wsPort: number;
  wssPort: number;
  /** The `path` of the ws/wss listeners (default `/mqtt`: the only path that is upgraded). */
  wsPath: string;
  /** The topic the examples publish to and subscribe to. */
  topic: string;
}

/** What a device connects with. `password` is known only right after creation or rotation. */
export interface DeviceCredentials {
  clientId: string;
  username?: string | null;
  password?: string | null;
  certIdentity?: string | null;
}

export type SnippetGroup = "tcp" | "tls" | "ws" | "url";

export interface Snippet {
  id: string;
  group: SnippetGroup;
  /** A short title, also used for the copy button ("Copy <title>"). */
  title: string;
  text: string;
}

export const DEFAULT_PORTS = { tcpPort: 1883, tlsPort: 8883, wsPort: 8080, wssPort: 8443 } as const;
export const DEFAULT_WS_PATH = "/mqtt";

/** A topic for the examples, derived from the client id (wildcards and `/` replaced). */
export function defaultTopic(clientId: string): string {
  const safe = clientId.replace(/[+#/\u0000]/g, "_");
  return `devices/${safe || "device"}/telemetry`;
}

/** The documented defaults, for a broker on `hostname` (the admin UI's host). */
export function defaultAddress(hostname: string, clientId: string): BrokerAddress {
  return { host: hostname || "localhost", ...DEFAULT_PORTS, wsPath: DEFAULT_WS_PATH, topic: defaultTopic(clientId) };
}

const SHELL_SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

/**
 * Quotes a word for POSIX shells: as it is when it holds only safe characters, otherwise in
 * single quotes, each `'` written as `'\''` (close, escaped quote, reopen).
 */
export function shellQuote(s: string): string {
  if (SHELL_SAFE.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Always single-quoted (secrets and messages: no surprise when they change). */
export function shellQuoteAlways(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A host for a URL: IPv6 literals in brackets. */
export function urlHost(host: string): string {
  const h = host.trim();
  if (h.includes(":") && !h.startsWith("[")) return `[${h}]`;
  return h;
}

/** A host for a command line (`-h`): IPv6 literals without brackets. */
export function cliHost(host: string): string {
  const h = host.trim();
  return h.startsWith("[") && h.endsWith("]") ? h.slice(1, -1) : h;
}

/** A WebSocket path with its leading slash. */
export function wsPath(path: string): string {
  const p = path.trim();
  if (!p) return "/";
  return p.startsWith("/") ? p : `/${p}`;
}

/** The `user:password@` part of a URL, percent-encoded (empty without credentials). */
export function userinfo(username: string | null | undefined, password: string | null | undefined): string {
  const u = username ? encodeURIComponent(username) : "";
  const p = password ? encodeURIComponent(password) : "";
  if (!u && !p) return "";
  return p ? `${u}:${p}@` : `${u}@`;
}

export type Scheme = "mqtt" | "mqtts" | "ws" | "wss";

/** A connection string: `mqtt://user:pass@host:1883`, `wss://user:pass@host:8443/mqtt`. */
export function connectionUrl(scheme: Scheme, creds: DeviceCredentials, addr: BrokerAddress): string {
  const port = { mqtt: addr.tcpPort, mqtts: addr.tlsPort, ws: addr.wsPort, wss: addr.wssPort }[scheme];
  const path = scheme === "ws" || scheme === "wss" ? wsPath(addr.wsPath) : "";
  return `${scheme}://${userinfo(creds.username, creds.password)}${urlHost(addr.host)}:${port}${path}`;
}

/** `-u`/`-P` (and client certificate) arguments shared by the command-line tools. */
function authArgs(creds: DeviceCredentials): string[] {
  const args: string[] = [];
  if (creds.username) args.push("-u", shellQuote(creds.username));
  if (creds.password) args.push("-P", shellQuoteAlways(creds.password));
  return args;
}

/** `mosquitto_pub` / `mosquitto_sub` over TCP (`tls`: false) or TLS (`--cafile ca.crt`). */
export function mosquittoCommand(tool: "pub" | "sub", creds: DeviceCredentials, addr: BrokerAddress, tls: boolean): string {
  const args = [`mosquitto_${tool}`, "-h", shellQuote(cliHost(addr.host)), "-p", String(tls ? addr.tlsPort : addr.tcpPort)];
  if (tls) {
    args.push("--cafile", "ca.crt");
    if (creds.certIdentity) args.push("--cert", "device.crt", "--key", "device.key");
  }
  args.push("-i", shellQuote(creds.clientId), ...authArgs(creds), "-t", shellQuote(addr.topic));
  if (tool === "pub") args.push("-m", shellQuoteAlways("hello"));
  else args.push("-v");
  return args.join(" ");
}

/**
 * MQTTX CLI over WebSocket (`mosquitto_pub` 2.0 has no WebSocket transport): `-l ws|wss`,
 * `--path` of the listener, `--ca ca.crt` for wss.
 */
export function mqttxCommand(tool: "pub" | "sub", creds: DeviceCredentials, addr: BrokerAddress, secure: boolean): string {
  const args = [
    "mqttx",
    tool,
    "-h",
    shellQuote(cliHost(addr.host)),
    "-p",
    String(secure ? addr.wssPort : addr.wsPort),
    "-l",
    secure ? "wss" : "ws",
    "--path",
    shellQuote(wsPath(addr.wsPath)),
  ];
  if (secure) {
    args.push("--ca", "ca.crt");
    if (creds.certIdentity) args.push("--cert", "device.crt", "--key", "device.key");
  }
  args.push("-i", shellQuote(creds.clientId), ...authArgs(creds), "-t", shellQuote(addr.topic));
  if (tool === "pub") args.push("-m", shellQuoteAlways("hello"));
  return args.join(" ");
}

/**
 * Every example for a device. A device without a password but with a certificate identity
 * gets only the TLS and secure-WebSocket examples (a certificate needs TLS).
 */
export function snippets(creds: DeviceCredentials, addr: BrokerAddress): Snippet[] {
  const certOnly = !creds.password && !!creds.certIdentity;
  const out: Snippet[] = [];
  if (!certOnly) {
    out.push(
      { id: "tcp-pub", group: "tcp", title: `mosquitto_pub over TCP (port ${addr.tcpPort})`, text: mosquittoCommand("pub", creds, addr, false) },
      { id: "tcp-sub", group: "tcp", title: `mosquitto_sub over TCP (port ${addr.tcpPort})`, text: mosquittoCommand("sub", creds, addr, false) },
    );
  }
  out.push(
    { id: "tls-pub", group: "tls", title: `mosquitto_pub over TLS (port ${addr.tlsPort})`, text: mosquittoCommand("pub", creds, addr, true) },
    { id: "tls-sub", group: "tls", title: `mosquitto_sub over TLS (port ${addr.tlsPort})`, text: mosquittoCommand("sub", creds, addr, true) },
  );
  if (!certOnly) {
    out.push({ id: "ws-pub", group: "ws", title: `mqttx pub over WebSocket (port ${addr.wsPort})`, text: mqttxCommand("pub", creds, addr, false) });
  }
  out.push({ id: "wss-pub", group: "ws", title: `mqttx pub over secure WebSocket (port ${addr.wssPort})`, text: mqttxCommand("pub", creds, addr, true) });
  if (!certOnly) out.push({ id: "url-mqtt", group: "url", title: "Connection string, TCP", text: connectionUrl("mqtt", creds, addr) });
  out.push({ id: "url-mqtts", group: "url", title: "Connection string, TLS", text: connectionUrl("mqtts", creds, addr) });
  if (!certOnly) out.push({ id: "url-ws", group: "url", title: "Connection string, WebSocket", text: connectionUrl("ws", creds, addr) });
  out.push({ id: "url-wss", group: "url", title: "Connection string, secure WebSocket", text: connectionUrl("wss", creds, addr) });
  return out;
}

/** Caveats to print next to the examples. */
export function snippetNotes(creds: DeviceCredentials): string[] {
  const notes: string[] = [];
  if (creds.password && !creds.username) {
    notes.push(
      "This device has no user name. Tern then finds it by its client id when a password comes without a user name, " +
        "which only MQTT 5 clients can send: mosquitto_pub/sub drop a password given without -u. Use an MQTT 5 client " +
        "that sends a password alone, or provision the device with a user name.",
    );
  }
  if (!creds.password && creds.certIdentity) {
    notes.push(
      "This device authenticates with its client certificate (device.crt/device.key): use a TLS listener that asks for " +
        "client certificates and maps them to devices.",
    );
  } else if (!creds.password) {
    notes.push("This device has no password: it authenticates with a certificate or a JWT (sent as the password).");
  }
  notes.push(
    "The examples use the device's own client id: run one at a time (a second connection with the same client id " +
      "takes the session over). ca.crt is the CA that signed the broker's certificate.",
  );
  return notes;
}

/** Label lines (`key=value`, one per line; blank lines ignored) as an object, or errors. */
export function parseLabels(text: string): { labels: Record<string, string>; errors: string[] } {
  const labels: Record<string, string> = {};
  const errors: string[] = [];
  const lines = text.split(/\r?\n/);
  let count = 0;
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const n = i + 1;
    const eq = line.indexOf("=");
    if (eq < 0) {
      errors.push(`line ${n}: expected key=value`);
      return;
    }
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (!/^[A-Za-z0-9._/-]{1,64}$/.test(key)) {
      errors.push(`line ${n}: the key must be 1 to 64 letters, digits, ".", "_", "-" or "/"`);
      return;
    }
    if (Object.prototype.hasOwnProperty.call(labels, key)) {
      errors.push(`line ${n}: the key "${key}" is given twice`);
      return;
    }
    if (new TextEncoder().encode(value).length > 256) {
      errors.push(`line ${n}: the value is longer than 256 bytes`);
      return;
    }
    if (value.includes("\u0000")) {
      errors.push(`line ${n}: the value holds a NUL character`);
      return;
    }
    labels[key] = value;
    count++;
  });
  if (count > 32) errors.push(`at most 32 labels (${count} given)`);
  return { labels, errors };
}

/** Labels as `key=value` lines, sorted by key. */
export function formatLabels(labels: Record<string, string> | null | undefined): string {
  return Object.entries(labels ?? {})
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join("\n");
}

/** The kinds of credentials a device has: `password`, `SCRAM`, `certificate`. */
export function credentialKinds(d: { has_password: boolean; has_scram: boolean; cert_identity?: string | null }): string[] {
  const kinds: string[] = [];
  if (d.has_password) kinds.push("password");
  if (d.has_scram) kinds.push("SCRAM");
  if (d.cert_identity) kinds.push("certificate");
  return kinds;
}

/** The MQTT version of a CONNECT protocol level. */
export function protocolName(level: number): string {
  return level === 5 ? "MQTT 5" : level === 4 ? "MQTT 3.1.1" : level === 3 ? "MQTT 3.1" : `level ${level}`;
}

/** The user name ACL rules see for a password device: its user name, else its client id. */
export function principalName(d: { client_id: string; username?: string | null }): string {
  return d.username || d.client_id;
}

/** Whether an ACL rule's subject covers a principal (its client id and user name). */
export function ruleApplies(
  rule: { client_id?: string | null; username?: string | null },
  clientId: string,
  username: string,
): boolean {
  return (rule.client_id == null || rule.client_id === clientId) && (rule.username == null || rule.username === username);
}

/** A listener as GET /api/v1/listeners describes it. */
export interface ListenerSummary {
  kind: string;
  port: number;
  path?: string | null;
}

/**
 * The ports and WebSocket path of the broker's actual listeners (the first of each kind), to
 * override the defaults with; kinds the broker does not run are absent.
 */
export function listenerOverrides(listeners: ListenerSummary[]): Partial<Pick<BrokerAddress, "tcpPort" | "tlsPort" | "wsPort" | "wssPort" | "wsPath">> {
  const first = (kind: string) => listeners.find((l) => l.kind === kind);
  const out: Partial<Pick<BrokerAddress, "tcpPort" | "tlsPort" | "wsPort" | "wssPort" | "wsPath">> = {};
  const ports = [
    ["tcp", "tcpPort"],
    ["tls", "tlsPort"],
    ["ws", "wsPort"],
    ["wss", "wssPort"],
  ] as const;
  for (const [kind, key] of ports) {
    const l = first(kind);
    if (l) out[key] = l.port;
  }
  const ws = first("ws") ?? first("wss");
  if (ws?.path) out.wsPath = ws.path;
  return out;
}

/** The listener kind an example needs. */
export function snippetKind(id: string): "tcp" | "tls" | "ws" | "wss" {
  const table: Record<string, "tcp" | "tls" | "ws" | "wss"> = {
    "tcp-pub": "tcp",
    "tcp-sub": "tcp",
    "url-mqtt": "tcp",
    "tls-pub": "tls",
    "tls-sub": "tls",
    "url-mqtts": "tls",
    "ws-pub": "ws",
    "url-ws": "ws",
    "wss-pub": "wss",
    "url-wss": "wss",
  };
  return table[id] ?? "tcp";
}

/** The examples a broker with these listener kinds can serve (all, when the kinds are unknown). */
export function forListeners(all: Snippet[], kinds: string[] | null): Snippet[] {
  if (!kinds || kinds.length === 0) return all;
  return all.filter((s) => kinds.includes(snippetKind(s.id)));
}
