// Sessions: every session, online and offline, polled every 5 s (pause toggle), with filters,
// paging, details with its subscriptions, and Delete session for operators. A second tab lists
// the subscriptions of all sessions (GET /api/v1/subscriptions).
// `#/sessions?client_id=X` filters on X and opens its details if it has a session.

import { useEffect, useRef, useState } from "preact/hooks";
import { api, seg, type Schemas, type Session, type SessionPage } from "../api/client";
import { useAuth } from "../auth";
import { Badge, Confirm, Empty, ErrorBanner, Facts, Field, Loading, Notice, Page, Pager, Tabs, useCursor } from "../components";
import { useAction, useAsync, useLocation } from "../hooks";
import { bytes, duration } from "../lib/format";
import { href } from "../lib/router";
import { expiryText, interval, retainHandlingText, shareGroup, subscriptionOptions } from "../lib/sessions";
import { LiveToggle, useDebounced, useUpdatedAt } from "./clients/shared";

type SubscriptionPage = Schemas["SubscriptionPage"];
type Subscription = Schemas["Subscription"];

const POLL_MS = 5000;
const PAGE = 50;

type Tab = "sessions" | "subscriptions";
type Status = "all" | "online" | "offline";

export function Sessions() {
  const loc = useLocation();
  const [tab, setTab] = useState<Tab>(loc.query.get("tab") === "subscriptions" ? "subscriptions" : "sessions");
  return (
    <Page title="Sessions">
      <Tabs<Tab>
        label="Sessions and subscriptions"
        tabs={[
          ["sessions", "Sessions"],
          ["subscriptions", "Subscriptions"],
        ]}
        value={tab}
        onChange={setTab}
      />
      <div role="tabpanel" aria-label={tab === "sessions" ? "Sessions" : "Subscriptions"}>
        {tab === "sessions" ? <SessionList /> : <SubscriptionList />}
      </div>
    </Page>
  );
}

function SessionList() {
  const auth = useAuth();
  const loc = useLocation();
  const qClient = loc.query.get("client_id") ?? "";
  const [prefix, setPrefix] = useState(qClient || (loc.query.get("prefix") ?? ""));
  const [owner, setOwner] = useState(loc.query.get("username") ?? "");
  const [status, setStatus] = useState<Status>("all");
  const [paused, setPaused] = useState(false);
  const [selected, setSelected] = useState<string | null>(qClient || null);
  const [deleting, setDeleting] = useState<Session | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const del = useAction();
  const cursor = useCursor();
  const p = useDebounced(prefix);
  const o = useDebounced(owner);

  useEffect(() => {
    if (qClient) {
      setPrefix(qClient);
      setSelected(qClient);
    }
  }, [qClient]);
  const first = useRef(true);
  useEffect(() => {
    if (first.current) first.current = false;
    else cursor.reset();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [p, o]);

  const list = useAsync(
    () => api.get<SessionPage>("/api/v1/sessions", { prefix: p, username: o, after: cursor.after, limit: PAGE }),
    [p, o, cursor.after],
    paused ? undefined : POLL_MS,
  );
  const updatedAt = useUpdatedAt(list.data);
  const all = list.data?.items ?? [];
  // The API has no online/offline filter: it applies to the page on screen.
  const items = status === "all" ? all : all.filter((s) => s.online === (status === "online"));
  const sel = selected === null ? undefined : all.find((s) => s.client_id === selected);
  const filtered = p !== "" || o !== "";

  const doDelete = async () => {
    const s = deleting;
    if (!s) return;
    const ok = await del.run(async () => {
      await api.del(`/api/v1/sessions/${seg(s.client_id)}`);
      return true;
    });
    setDeleting(null);
    if (ok) {
      if (selected === s.client_id) setSelected(null);
      setNotice(`Deleted the session of ${s.client_id}.`);
    }
    list.reload();
  };

  return (
    <>
      {notice && (
        <Notice>
          <span>{notice}</span>
          <button type="button" class="link" onClick={() => setNotice(null)} aria-label="Dismiss notice">
            ×
          </button>
        </Notice>
      )}
      <ErrorBanner error={del.error} onDismiss={del.clear} />
      <div class="toolbar">
        <div class="toolbar" role="search" aria-label="Filter sessions">
          <Field label="Client id prefix" id="sessions-prefix">
            <input id="sessions-prefix" type="search" value={prefix} onInput={(e) => setPrefix(e.currentTarget.value)} autocomplete="off" />
          </Field>
          <Field label="Owner (user name)" id="sessions-owner">
            <input id="sessions-owner" type="search" value={owner} onInput={(e) => setOwner(e.currentTarget.value)} autocomplete="off" />
          </Field>
          <Field label="Status" id="sessions-status">
            <select id="sessions-status" value={status} onChange={(e) => setStatus(e.currentTarget.value as Status)}>
              <option value="all">Online and offline</option>
              <option value="online">Online</option>
              <option value="offline">Offline</option>
            </select>
          </Field>
        </div>
        <div class="push-right">
          <LiveToggle paused={paused} onToggle={() => setPaused((x) => !x)} updatedAt={updatedAt} every="5 s" />
        </div>
      </div>
      <ErrorBanner error={list.error} />
      {list.loading && !list.data ? (
        <Loading label="Loading sessions…" />
      ) : !list.data ? null : items.length === 0 ? (
        <Empty>
          {all.length > 0
            ? `No ${status} session on this page.`
            : filtered
              ? "No session matches these filters."
              : cursor.hasPrev
                ? "No more sessions."
                : "No sessions."}
        </Empty>
      ) : (
        <div class="table-wrap">
          <table>
            <caption class="vh">Sessions</caption>
            <thead>
              <tr>
                <th scope="col">Client id</th>
                <th scope="col">Status</th>
                <th scope="col">Persistent</th>
                <th scope="col">Expiry</th>
                <th scope="col">Offline for</th>
                <th scope="col">Owner</th>
                <th scope="col" class="num">
                  Queued
                </th>
                <th scope="col" class="num">
                  In flight
                </th>
                <th scope="col" class="num">
                  Subscriptions
                </th>
                <th scope="col">
                  <span class="vh">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((s) => (
                <tr key={s.client_id} class={s.client_id === selected ? "selected" : undefined}>
                  <td>
                    <a href={href(["devices", s.client_id])}>{s.client_id}</a>
                  </td>
                  <td>{s.online ? <Badge kind="ok">Online</Badge> : <Badge kind="off">Offline</Badge>}</td>
                  <td>{s.persistent ? "Yes" : "No"}</td>
                  <td>{expiryText(s)}</td>
                  <td>{s.offline_for_secs == null ? <span class="muted">–</span> : duration(s.offline_for_secs)}</td>
                  <td>{s.owner ?? <span class="muted">anonymous</span>}</td>
                  <td class="num">{s.queued}</td>
                  <td class="num">{s.inflight}</td>
                  <td class="num">{s.subscriptions.length}</td>
                  <td class="row-actions">
                    <button
                      type="button"
                      class="small"
                      aria-expanded={s.client_id === selected}
                      aria-controls="session-details"
                      aria-label={`Details of ${s.client_id}`}
                      onClick={() => setSelected((x) => (x === s.client_id ? null : s.client_id))}
                    >
                      Details
                    </button>
                    {auth.canOperate && (
                      <button type="button" class="small" aria-label={`Delete session ${s.client_id}`} onClick={() => setDeleting(s)}>
                        Delete
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager hasPrev={cursor.hasPrev} next={list.data?.next} onPrev={cursor.prev} onNext={cursor.next} />

      {selected !== null && list.data && (
        <div id="session-details">
          {sel ? (
            <SessionDetails
              key={selected}
              session={sel}
              canOperate={auth.canOperate}
              onDelete={() => setDeleting(sel)}
              onClose={() => setSelected(null)}
            />
          ) : (
            <section class="card" aria-label={`Session ${selected}`}>
              <p>
                <strong>{selected}</strong> has no session{filtered || cursor.hasPrev ? " on this page of the list" : ""}.{" "}
                <a href={href(["devices", selected])}>Its device page</a>
              </p>
              <button type="button" onClick={() => setSelected(null)}>
                Close details
              </button>
            </section>
          )}
        </div>
      )}

      {deleting && (
        <Confirm
          title={`Delete the session of ${deleting.client_id}?`}
          confirmLabel="Delete session"
          danger
          busy={del.busy}
          onCancel={() => setDeleting(null)}
          onConfirm={doDelete}
        >
          <p>
            Its {deleting.subscriptions.length} subscription{deleting.subscriptions.length === 1 ? "" : "s"} and {deleting.queued} queued
            message{deleting.queued === 1 ? "" : "s"} are discarded.
            {deleting.online && " The client is online: it is disconnected (0x98 Administrative action)."}
          </p>
          <p>The device itself is not deleted; it starts a new session when it connects again.</p>
        </Confirm>
      )}
    </>
  );
}

/**
 * A session's details. The list's items are whole sessions (subscriptions included) and are
 * polled, so this reads them rather than GET /sessions/{id}: no second poll, and no 404 when
 * the session ends between two polls.
 */
function SessionDetails(props: { session: Session; canOperate: boolean; onDelete: () => void; onClose: () => void }) {
  const h = useRef<HTMLHeadingElement>(null);
  useEffect(() => h.current?.focus(), []);
  const s = props.session;
  return (
    <section class="card" aria-labelledby="session-details-title">
      <div class="card-head">
        <h2 id="session-details-title" tabIndex={-1} ref={h}>
          Session {s.client_id}
        </h2>
        <div class="row-actions">
          {props.canOperate && (
            <button type="button" class="danger" onClick={props.onDelete}>
              Delete session
            </button>
          )}
          <button type="button" onClick={props.onClose}>
            Close details
          </button>
        </div>
      </div>
      <Facts
        items={[
          ["Client id", <code>{s.client_id}</code>],
          ["Status", s.online ? <Badge kind="ok">Online</Badge> : <Badge kind="off">Offline</Badge>],
          ["Owner", s.owner ?? "anonymous"],
          ["Persistent", s.persistent ? "Yes (outlives the connection)" : "No (ends with the connection)"],
          ["Expiry interval", s.expiry_interval == null ? "never expires" : interval(s.expiry_interval)],
          ["Expires", expiryText(s)],
          ["Offline for", s.offline_for_secs == null ? "–" : duration(s.offline_for_secs)],
          ["Queued", `${s.queued} messages (${bytes(s.queued_bytes)})`],
          ["In flight", `${s.inflight} messages`],
        ]}
      />
      <p class="small">
        <a href={href(["devices", s.client_id])}>Device page</a>
        {s.online && (
          <>
            {" "}
            · <a href={href(["clients"], { client_id: s.client_id })}>Live connection</a>
          </>
        )}{" "}
        · <a href={href(["acl"], { client_id: s.client_id })}>ACL rules and access check</a>
      </p>
      <h3>Subscriptions ({s.subscriptions.length})</h3>
      {s.subscriptions.length === 0 ? (
        <Empty>No subscriptions.</Empty>
      ) : (
        <SubscriptionTable subs={s.subscriptions.map((sub) => ({ sub }))} caption={`Subscriptions of ${s.client_id}`} />
      )}
    </section>
  );
}

function SubscriptionTable(props: { subs: { sub: Subscription; clientId?: string; online?: boolean }[]; caption: string }) {
  const withClient = props.subs.some((x) => x.clientId !== undefined);
  return (
    <div class="table-wrap">
      <table>
        <caption class="vh">{props.caption}</caption>
        <thead>
          <tr>
            {withClient && <th scope="col">Client id</th>}
            {withClient && <th scope="col">Status</th>}
            <th scope="col">Filter</th>
            <th scope="col">QoS</th>
            <th scope="col">Options</th>
            <th scope="col">Subscription id</th>
          </tr>
        </thead>
        <tbody>
          {props.subs.map(({ sub, clientId, online }) => {
            const group = shareGroup(sub.filter);
            return (
              <tr key={`${clientId ?? ""}\u0000${sub.filter}`}>
                {withClient && (
                  <td>
                    <a href={href(["sessions"], { client_id: clientId ?? "" })}>{clientId}</a>
                  </td>
                )}
                {withClient && <td>{online ? <Badge kind="ok">Online</Badge> : <Badge kind="off">Offline</Badge>}</td>}
                <td>
                  <code>{sub.filter}</code>
                  {group && (
                    <>
                      {" "}
                      <Badge kind="off">shared: {group}</Badge>
                    </>
                  )}
                </td>
                <td>{sub.qos}</td>
                <td title={retainHandlingText(sub.retain_handling)}>{subscriptionOptions(sub).join(" · ")}</td>
                <td>{sub.subscription_id ?? <span class="muted">–</span>}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

function SubscriptionList() {
  const [prefix, setPrefix] = useState("");
  const [filter, setFilter] = useState("");
  const cursor = useCursor();
  const p = useDebounced(prefix);
  const f = useDebounced(filter);
  const first = useRef(true);
  useEffect(() => {
    if (first.current) first.current = false;
    else cursor.reset();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [p, f]);
  const list = useAsync(
    () => api.get<SubscriptionPage>("/api/v1/subscriptions", { prefix: p, filter: f, after: cursor.after, limit: PAGE }),
    [p, f, cursor.after],
  );
  const items = list.data?.items ?? [];
  return (
    <>
      <div class="toolbar">
        <div class="toolbar" role="search" aria-label="Filter subscriptions">
          <Field label="Client id prefix" id="subs-prefix">
            <input id="subs-prefix" type="search" value={prefix} onInput={(e) => setPrefix(e.currentTarget.value)} autocomplete="off" />
          </Field>
          <Field label="Filter contains" id="subs-filter">
            <input id="subs-filter" type="search" class="mono" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} autocomplete="off" />
          </Field>
        </div>
        <button type="button" class="push-right" onClick={list.reload} disabled={list.loading}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={list.error} />
      {list.loading && !list.data ? (
        <Loading label="Loading subscriptions…" />
      ) : !list.data ? null : items.length === 0 ? (
        <Empty>{p || f ? "No subscription matches these filters." : cursor.hasPrev ? "No more subscriptions." : "No subscriptions."}</Empty>
      ) : (
        <SubscriptionTable subs={items.map((x) => ({ sub: x.subscription, clientId: x.client_id, online: x.online }))} caption="Subscriptions of all sessions" />
      )}
      <Pager hasPrev={cursor.hasPrev} next={list.data?.next} onPrev={cursor.prev} onNext={cursor.next} />
    </>
  );
}
