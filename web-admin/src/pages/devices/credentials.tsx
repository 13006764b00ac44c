// "Credentials shown once": the password a create or a rotation returned, with copy buttons and
// ready-to-paste connection examples (computed in lib/snippets.ts). Used by the create wizard
// and by the device page after a rotation.

import { useEffect, useState } from "preact/hooks";
import { api, type Device, type Schemas } from "../../api/client";
import { CopyButton, Field } from "../../components";
import { defaultAddress, snippetNotes, snippets, forListeners, listenerOverrides, type BrokerAddress, type SnippetGroup } from "../../lib/snippets";

const STORAGE_KEY = "tern.snippet-address";

/** The settings as typed (strings: a field may be empty or half-typed). */
type AddressForm = Record<keyof BrokerAddress, string>;

function loadForm(clientId: string): AddressForm {
  const base = defaultAddress(location.hostname, clientId);
  const form: AddressForm = {
    host: base.host,
    tcpPort: String(base.tcpPort),
    tlsPort: String(base.tlsPort),
    wsPort: String(base.wsPort),
    wssPort: String(base.wssPort),
    wsPath: base.wsPath,
    topic: base.topic,
  };
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    const saved = raw ? (JSON.parse(raw) as Partial<AddressForm>) : {};
    for (const k of ["host", "tcpPort", "tlsPort", "wsPort", "wssPort", "wsPath"] as const) {
      const v = saved[k];
      if (typeof v === "string" && v.trim()) form[k] = v;
    }
  } catch {
    // Unreadable settings: the defaults.
  }
  return form;
}

function saveForm(f: AddressForm): void {
  const { topic: _topic, ...rest } = f;
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(rest));
  } catch {
    // No storage (private mode): the settings last for this page only.
  }
}

function validPort(v: string): number | undefined {
  const n = Number(v);
  return v.trim() !== "" && Number.isInteger(n) && n >= 1 && n <= 65535 ? n : undefined;
}

/** The address the examples use: what was typed where valid, the defaults elsewhere. */
function effective(f: AddressForm, clientId: string): BrokerAddress {
  const base = defaultAddress(location.hostname, clientId);
  return {
    host: f.host.trim() || base.host,
    tcpPort: validPort(f.tcpPort) ?? base.tcpPort,
    tlsPort: validPort(f.tlsPort) ?? base.tlsPort,
    wsPort: validPort(f.wsPort) ?? base.wsPort,
    wssPort: validPort(f.wssPort) ?? base.wssPort,
    wsPath: f.wsPath.trim() || base.wsPath,
    topic: f.topic.trim() || base.topic,
  };
}

const GROUPS: [SnippetGroup, string][] = [
  ["tcp", "MQTT over TCP"],
  ["tls", "MQTT over TLS"],
  ["ws", "MQTT over WebSocket (MQTTX CLI: mosquitto_pub 2.0 has no WebSocket transport)"],
  ["url", "Connection strings"],
];

/** The secret box: the password in full, a copy button, and the warning. */
export function PasswordOnce(props: { password: string }) {
  return (
    <div>
      <p class="banner warn" role="note">
        <strong>Copy this password now: it will not be shown again.</strong> Tern keeps only its hash; if it is lost, rotate the
        credentials.
      </p>
      <div class="secret" role="group" aria-label="Generated password">
        <code id="device-password" class="mono">
          {props.password}
        </code>
        <CopyButton text={props.password} label="Copy password" />
      </div>
    </div>
  );
}

/** The password (if any) and the connection examples of a device. */
export function ShownOnce(props: { device: Device; password: string | null | undefined }) {
  const d = props.device;
  const [form, setForm] = useState<AddressForm>(() => loadForm(d.client_id));
  // The kinds of listener the broker runs (null: not known, every example is shown).
  const [kinds, setKinds] = useState<string[] | null>(null);
  const fromBroker = kinds !== null;
  // The broker's actual listeners replace the documented default ports and path.
  useEffect(() => {
    let alive = true;
    api
      .get<Schemas["ListenerList"]>("/api/v1/listeners")
      .then((l) => {
        if (!alive || l.items.length === 0) return;
        const o = listenerOverrides(l.items);
        setForm((f) => ({ ...f, ...Object.fromEntries(Object.entries(o).map(([k, v]) => [k, String(v)])) }));
        setKinds(l.items.map((x) => x.kind));
      })
      .catch(() => {
        // Older broker or no answer: the defaults stay, the operator can edit them.
      });
    return () => {
      alive = false;
    };
  }, []);
  const addr = effective(form, d.client_id);
  const creds = { clientId: d.client_id, username: d.username, password: props.password, certIdentity: d.cert_identity };
  // Only examples for listeners the broker runs: a TLS command against a broker without TLS
  // would only fail.
  const all = forListeners(snippets(creds, addr), kinds);
  const notes = snippetNotes(creds);
  const update = (key: keyof BrokerAddress, value: string) => {
    const next = { ...form, [key]: value };
    setForm(next);
    saveForm(next);
  };
  const input = (key: keyof BrokerAddress, label: string, port = false) => (
    <Field label={label} id={`snip-${key}`}>
      <input
        id={`snip-${key}`}
        {...(port ? { type: "number", min: 1, max: 65535, class: "port" } : {})}
        value={form[key]}
        onInput={(e) => update(key, e.currentTarget.value)}
      />
    </Field>
  );
  return (
    <div class="shown-once">
      {props.password ? (
        <PasswordOnce password={props.password} />
      ) : d.has_password ? (
        <p class="banner info" role="note">
          Its password is not shown: Tern keeps only its hash. Rotate the credentials for a new one.
        </p>
      ) : (
        <p class="banner info" role="note">
          No password was set: this device authenticates with a certificate or a JWT.
        </p>
      )}
      <h3>Connection examples</h3>
      <details class="snippet-settings">
        <summary>Broker address used in the examples</summary>
        <p class="muted small">
          {fromBroker
            ? "Ports and the WebSocket path are the broker's listeners (examples only for the kinds it runs). "
            : "These are Tern's documented defaults (tcp 1883, tls 8883, ws 8080, wss 8443, path /mqtt). "}
          The host is this page's: set the one devices reach the broker by. Your changes are remembered in this browser.
        </p>
        <div class="row">
          {input("host", "Broker host")}
          {input("tcpPort", "TCP port", true)}
          {input("tlsPort", "TLS port", true)}
          {input("wsPort", "WebSocket port", true)}
          {input("wssPort", "Secure WebSocket port", true)}
          {input("wsPath", "WebSocket path")}
          {input("topic", "Example topic")}
        </div>
      </details>
      {notes.length > 0 && (
        <ul class="muted small snippet-notes">
          {notes.map((n) => (
            <li key={n}>{n}</li>
          ))}
        </ul>
      )}
      {GROUPS.map(([g, title]) => {
        const items = all.filter((s) => s.group === g);
        if (!items.length) return null;
        return (
          <section key={g} class="snippet-group" aria-label={title}>
            <h4>{title}</h4>
            {items.map((s) => (
              <div key={s.id} class="snippet">
                <div class="snippet-head">
                  <span id={`snippet-${s.id}`}>{s.title}</span>
                  <CopyButton text={s.text} label={`Copy ${s.title}`} />
                </div>
                <pre aria-labelledby={`snippet-${s.id}`} data-snippet={s.id}>
                  <code>{s.text}</code>
                </pre>
              </div>
            ))}
          </section>
        );
      })}
    </div>
  );
}
