// One device: its facts, its own limits (editable by operators), its live connection and
// session (polled every 3 s), the ACL rules that name it, its recent audit entries, and the
// operator actions (enable/disable, rotate credentials, kick, delete).

import { useEffect, useRef, useState } from "preact/hooks";
import {
  api,
  ApiError,
  seg,
  type AclRule,
  type AuditPage,
  type Client,
  type CreatedDevice,
  type Device,
  type DeviceDetail,
  type Schemas,
  type Session,
  type SessionPage,
} from "../api/client";
import { useAuth } from "../auth";
import { Badge, Confirm, Empty, ErrorBanner, Facts, Loading, Page } from "../components";
import { useAction, useAsync } from "../hooks";
import { ago, bytes, duration, when } from "../lib/format";
import { go, href } from "../lib/router";
import { principalName, protocolName, ruleApplies } from "../lib/snippets";
import { ShownOnce } from "./devices/credentials";
import { LimitsSection } from "./devices/limits";
import { Credentials, DeviceStatus, Labels } from "./devices/status";

const POLL_MS = 3000;

type AclRuleList = Schemas["AclRuleList"];

export function DeviceDetailPage(props: { clientId: string }) {
  const id = props.clientId;
  const auth = useAuth();
  // Set while deleting (and after a 404): polls answer from memory instead of asking again,
  // so no request fails on the way out.
  const stopped = useRef(false);
  const lastDetail = useRef<DeviceDetail | null>(null);
  useEffect(() => {
    stopped.current = false;
    lastDetail.current = null;
  }, [id]);

  const detail = useAsync<DeviceDetail | null>(
    async () => {
      if (stopped.current) return lastDetail.current;
      try {
        const d = await api.get<DeviceDetail>(`/api/v1/devices/${seg(id)}`);
        lastDetail.current = d;
        return d;
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          stopped.current = true;
          lastDetail.current = null;
          return null;
        }
        throw e;
      }
    },
    [id],
    POLL_MS,
  );

  const action = useAction();
  const [running, setRunning] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<"delete" | "rotate" | null>(null);
  const [rotated, setRotated] = useState<CreatedDevice | null>(null);
  const [auditTick, setAuditTick] = useState(0);

  const device = detail.data?.device;
  const principal = device ? principalName(device) : null;

  /** Runs an operator action, then reloads what it may have changed. */
  const run = async <T,>(name: string, f: () => Promise<T>): Promise<{ value: T } | undefined> => {
    setRunning(name);
    const res = await action.run(async () => ({ value: await f() }));
    setRunning(null);
    detail.reload();
    setAuditTick((t) => t + 1);
    return res;
  };

  const toggle = (d: Device) => run(d.enabled ? "disable" : "enable", () => api.patch<Device>(`/api/v1/devices/${seg(id)}`, { enabled: !d.enabled }));
  const kick = () => run("kick", () => api.post<void>(`/api/v1/clients/${seg(id)}/kick`));
  const rotate = async (d: Device) => {
    // Keep a SCRAM verifier if it had one (without `scram` the API removes it). No `password`:
    // the API generates one and returns it once.
    const res = await run("rotate", () => api.post<CreatedDevice>(`/api/v1/devices/${seg(id)}/rotate`, { scram: d.has_scram }));
    setConfirm(null);
    if (res) setRotated(res.value);
  };
  const remove = async () => {
    stopped.current = true;
    setRunning("delete");
    const res = await action.run(async () => ({ value: await api.del(`/api/v1/devices/${seg(id)}`) }));
    setRunning(null);
    if (res) {
      setConfirm(null);
      go("#/devices");
    } else {
      stopped.current = false;
      setConfirm(null);
    }
  };

  const busy = running !== null;
  const actions =
    auth.canOperate && device ? (
      <>
        <button type="button" disabled={busy} onClick={() => void toggle(device)}>
          {running === "disable" ? "Disabling…" : running === "enable" ? "Enabling…" : device.enabled ? "Disable" : "Enable"}
        </button>
        <button type="button" disabled={busy} onClick={() => setConfirm("rotate")}>
          {running === "rotate" ? "Rotating…" : "Rotate credentials"}
        </button>
        {detail.data?.connection && (
          <button type="button" disabled={busy} onClick={() => void kick()}>
            {running === "kick" ? "Kicking…" : "Kick"}
          </button>
        )}
        <button type="button" class="danger" disabled={busy} onClick={() => setConfirm("delete")}>
          {running === "delete" ? "Deleting…" : "Delete"}
        </button>
      </>
    ) : undefined;

  return (
    <Page title={`Device ${id}`} actions={actions}>
      <p class="small">
        <a href="#/devices">← All devices</a>
      </p>
      <ErrorBanner error={action.error} onDismiss={action.clear} />
      {rotated && <RotatedCredentials created={rotated} onClose={() => setRotated(null)} />}
      {detail.data === undefined ? (
        detail.error ? (
          <ErrorBanner error={detail.error} />
        ) : (
          <Loading label="Loading the device…" />
        )
      ) : detail.data === null ? (
        <Empty>
          No device has the client id <code>{id}</code>. <a href="#/devices">Back to the device list.</a>
        </Empty>
      ) : (
        <>
          {/* A failed refresh: the last good data stays on screen below. */}
          <ErrorBanner error={detail.error} />
          <DeviceFacts device={detail.data.device} />
          <LimitsSection
            key={id}
            device={detail.data.device}
            canOperate={auth.canOperate}
            onSaved={() => {
              detail.reload();
              setAuditTick((t) => t + 1);
            }}
          />
          <Connection connection={detail.data.connection ?? null} />
          <SessionSection clientId={id} stopped={stopped} />
          {principal && <AclSection clientId={id} principal={principal} hasUsername={!!detail.data.device.username} />}
          {auth.canOperate ? (
            <AuditSection clientId={id} tick={auditTick} />
          ) : (
            <section aria-labelledby="audit-title">
              <h2 id="audit-title">Recent audit entries</h2>
              <p class="muted">The audit log is for operators and admins.</p>
            </section>
          )}
        </>
      )}
      {confirm === "delete" && (
        <Confirm
          title={`Delete device ${id}?`}
          confirmLabel={running === "delete" ? "Deleting…" : "Delete device"}
          danger
          busy={busy}
          onConfirm={() => void remove()}
          onCancel={() => setConfirm(null)}
        >
          <p>
            Its connection is closed and it can no longer connect. Its persistent session, if any, stays until it expires or is
            deleted. ACL rules that name it are kept.
          </p>
        </Confirm>
      )}
      {confirm === "rotate" && device && (
        <Confirm
          title={`Rotate the credentials of ${id}?`}
          confirmLabel={running === "rotate" ? "Rotating…" : "Rotate credentials"}
          busy={busy}
          onConfirm={() => void rotate(device)}
          onCancel={() => setConfirm(null)}
        >
          <p>
            A new password is generated and shown once{device.has_scram ? " (with a new SCRAM verifier)" : ""}. The old one stops
            working at once and the device is disconnected.
          </p>
        </Confirm>
      )}
    </Page>
  );
}

/** The new password after a rotation, with the examples; focus moves to its heading. */
function RotatedCredentials(props: { created: CreatedDevice; onClose: () => void }) {
  const h = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    h.current?.focus();
  }, [props.created]);
  return (
    <section class="card" aria-labelledby="rotated-title">
      <h2 id="rotated-title" ref={h} tabIndex={-1}>
        New credentials, shown once
      </h2>
      <ShownOnce device={props.created.device} password={props.created.password} />
      <div class="dialog-actions">
        <button type="button" class="primary" onClick={props.onClose}>
          I have saved them
        </button>
      </div>
    </section>
  );
}

function DeviceFacts(props: { device: Device }) {
  const d = props.device;
  return (
    <section aria-labelledby="device-facts-title">
      <h2 id="device-facts-title">Device</h2>
      <Facts
        items={[
          ["Client id", <code>{d.client_id}</code>],
          [
            "User name",
            d.username ? (
              <code>{d.username}</code>
            ) : (
              <span class="muted">none (ACL rules see its client id)</span>
            ),
          ],
          ["Credentials", <Credentials device={d} />],
          ["Certificate identity", d.cert_identity ? <code>{d.cert_identity}</code> : <span class="muted">none</span>],
          ["Created", when(d.created_at)],
          ["Labels", <Labels labels={d.labels} />],
          ["Status", <DeviceStatus device={d} />],
        ]}
      />
    </section>
  );
}

function Connection(props: { connection: Client | null }) {
  const c = props.connection;
  return (
    <section aria-labelledby="connection-title">
      <h2 id="connection-title">Live connection</h2>
      {!c ? (
        <Empty>Not connected.</Empty>
      ) : (
        <Facts
          items={[
            ["Peer", <code>{c.peer}</code>],
            ["Listener", c.listener],
            ["Protocol", protocolName(c.protocol)],
            ["Keep alive", c.keep_alive ? `${c.keep_alive} s` : "none"],
            ["Connected since", `${when(c.connected_at)} (${ago(c.connected_at)})`],
            ["Queued", `${c.queued} (${bytes(c.queued_bytes)})`],
            ["In flight", String(c.inflight)],
            ["Session", c.persistent ? "persistent" : "clean"],
          ]}
        />
      )}
      <p class="muted small">Refreshed every 3 s.</p>
    </section>
  );
}

/**
 * The device's session. GET /api/v1/sessions/{id} answers 404 when there is none, which the
 * browser logs as a failed request; the list with `prefix` = the client id and `limit` 1
 * answers the same question without failing (client-id order: the id itself comes first).
 */
function SessionSection(props: { clientId: string; stopped: { current: boolean } }) {
  const last = useRef<Session | null>(null);
  const s = useAsync<Session | null>(
    async () => {
      if (props.stopped.current) return last.current;
      const page = await api.get<SessionPage>("/api/v1/sessions", { prefix: props.clientId, limit: 1 });
      const first = page.items[0];
      last.current = first && first.client_id === props.clientId ? first : null;
      return last.current;
    },
    [props.clientId],
    POLL_MS,
  );
  return (
    <section aria-labelledby="session-title">
      <h2 id="session-title">Session and subscriptions</h2>
      <ErrorBanner error={s.error} />
      {s.data === undefined ? (
        s.loading ? <Loading label="Loading the session…" /> : null
      ) : s.data === null ? (
        <Empty>No session: the device is not connected and keeps no persistent session.</Empty>
      ) : (
        <>
          <Facts
            items={[
              ["State", s.data.online ? <Badge kind="ok">online</Badge> : <Badge kind="off">offline</Badge>],
              ["Persistent", s.data.persistent ? "yes" : "no (ends with the connection)"],
              ["Expiry interval", s.data.expiry_interval == null ? "never expires" : duration(s.data.expiry_interval)],
              ...(s.data.offline_for_secs != null ? ([["Offline for", duration(s.data.offline_for_secs)]] as [string, string][]) : []),
              ["Owner", s.data.owner ? <code>{s.data.owner}</code> : <span class="muted">anonymous</span>],
              ["Queued", `${s.data.queued} (${bytes(s.data.queued_bytes)})`],
              ["In flight", String(s.data.inflight)],
            ]}
          />
          <h3>Subscriptions</h3>
          {s.data.subscriptions.length === 0 ? (
            <Empty>No subscriptions.</Empty>
          ) : (
            <table aria-label="Subscriptions">
              <thead>
                <tr>
                  <th scope="col">Filter</th>
                  <th scope="col" class="num">
                    QoS
                  </th>
                  <th scope="col">No local</th>
                  <th scope="col">Retain as published</th>
                  <th scope="col" class="num">
                    Retain handling
                  </th>
                  <th scope="col" class="num">
                    Subscription id
                  </th>
                </tr>
              </thead>
              <tbody>
                {s.data.subscriptions.map((sub) => (
                  <tr key={sub.filter}>
                    <td>
                      <code>{sub.filter}</code>
                    </td>
                    <td class="num">{sub.qos}</td>
                    <td>{sub.no_local ? "yes" : "no"}</td>
                    <td>{sub.retain_as_published ? "yes" : "no"}</td>
                    <td class="num">{sub.retain_handling}</td>
                    <td class="num">{sub.subscription_id ?? "–"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  );
}

/**
 * The stored ACL rules that name this device: by client id (`client_id` filter) and by the
 * user name its connections get (`username` filter: its user name, or its client id when it
 * has none). Rules naming both are kept only when both match. Global rules are counted.
 */
function AclSection(props: { clientId: string; principal: string; hasUsername: boolean }) {
  const rules = useAsync<{ own: AclRule[]; global: number }>(
    async () => {
      const [byId, byName, global] = await Promise.all([
        api.get<AclRuleList>("/api/v1/acl/rules", { client_id: props.clientId }),
        api.get<AclRuleList>("/api/v1/acl/rules", { username: props.principal }),
        api.get<AclRuleList>("/api/v1/acl/rules", { global: true }),
      ]);
      const seen = new Map<number, AclRule>();
      for (const r of [...byId.items, ...byName.items]) {
        if (ruleApplies(r, props.clientId, props.principal)) seen.set(r.id, r);
      }
      return { own: [...seen.values()].sort((a, b) => a.id - b.id), global: global.items.length };
    },
    [props.clientId, props.principal],
  );
  return (
    <section aria-labelledby="acl-title">
      <h2 id="acl-title">ACL rules</h2>
      <p class="muted small">
        Stored rules for client id <code>{props.clientId}</code> or user name <code>{props.principal}</code>
        {props.hasUsername ? "" : " (it has no user name: rules see its client id)"}. A matching deny wins over any allow.{" "}
        <a href={href(["acl"])}>Manage ACL rules</a>
      </p>
      <ErrorBanner error={rules.error} />
      {!rules.data ? (
        rules.loading ? <Loading label="Loading ACL rules…" /> : null
      ) : (
        <>
          {rules.data.own.length === 0 ? (
            <Empty>No rule names this device.</Empty>
          ) : (
            <table aria-label="ACL rules of this device">
              <thead>
                <tr>
                  <th scope="col" class="num">
                    Rule
                  </th>
                  <th scope="col">Permission</th>
                  <th scope="col">Action</th>
                  <th scope="col">Topic filter</th>
                  <th scope="col">For</th>
                  <th scope="col">Limits</th>
                </tr>
              </thead>
              <tbody>
                {rules.data.own.map((r) => (
                  <tr key={r.id}>
                    <td class="num">{r.id}</td>
                    <td>{r.permission === "allow" ? <Badge kind="ok">allow</Badge> : <Badge kind="bad">deny</Badge>}</td>
                    <td>{r.action}</td>
                    <td>
                      <code>{r.topic}</code>
                    </td>
                    <td>
                      {[r.client_id != null ? `client id ${r.client_id}` : null, r.username != null ? `user name ${r.username}` : null]
                        .filter(Boolean)
                        .join(", ")}
                    </td>
                    <td>
                      {[r.max_qos != null ? `QoS ≤ ${r.max_qos}` : null, r.allow_retain === false ? "no retained publishes" : null]
                        .filter(Boolean)
                        .join(", ") || <span class="muted">–</span>}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <p class="muted small">
            {rules.data.global === 0
              ? "No global rule (for every client) exists."
              : `${rules.data.global} global rule${rules.data.global === 1 ? "" : "s"} (for every client) also appl${rules.data.global === 1 ? "ies" : "y"}.`}
          </p>
        </>
      )}
    </section>
  );
}

/** The last entries of the audit log about this device (`target` = `device:<client id>`). */
function AuditSection(props: { clientId: string; tick: number }) {
  const target = `device:${props.clientId}`;
  const audit = useAsync<AuditPage>(() => api.get<AuditPage>("/api/v1/audit", { target, limit: 10 }), [target, props.tick]);
  return (
    <section aria-labelledby="audit-title">
      <h2 id="audit-title">Recent audit entries</h2>
      <ErrorBanner error={audit.error} />
      {!audit.data ? (
        audit.loading ? <Loading label="Loading audit entries…" /> : null
      ) : audit.data.items.length === 0 ? (
        <Empty>No audit entry about this device.</Empty>
      ) : (
        <table aria-label="Recent audit entries">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Actor</th>
              <th scope="col">Action</th>
              <th scope="col">Source</th>
              <th scope="col">Details</th>
            </tr>
          </thead>
          <tbody>
            {audit.data.items.map((a) => (
              <tr key={a.id}>
                <td>
                  <time dateTime={a.at} title={a.at}>
                    {when(a.at)}
                  </time>
                </td>
                <td>{a.actor}</td>
                <td>
                  <code>{a.action}</code>
                </td>
                <td>{a.source ?? <span class="muted">command line</span>}</td>
                <td>
                  <details>
                    <summary>Show</summary>
                    <pre>{JSON.stringify(a.detail, null, 2)}</pre>
                  </details>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <p class="small">
        <a href={href(["audit"], { target })}>Open in the audit log</a>
      </p>
    </section>
  );
}
