// Clients: the connected clients, polled every 3 s (with a pause toggle), filtered by client-id
// prefix and user name, paged; a details panel and, for operators, a Kick button.
// `#/clients?client_id=X` filters on X and opens its details if it is connected.

import { useEffect, useRef, useState } from "preact/hooks";
import { api, seg, type Client, type ClientPage } from "../api/client";
import { useAuth } from "../auth";
import { Badge, Confirm, Empty, ErrorBanner, Facts, Field, Loading, Notice, Page, Pager, useCursor } from "../components";
import { useAction, useAsync, useLocation } from "../hooks";
import { ago, bytes, when } from "../lib/format";
import { href } from "../lib/router";
import { keepAliveText, protocolName } from "../lib/sessions";
import { LiveToggle, useDebounced, useUpdatedAt } from "./clients/shared";

const POLL_MS = 3000;
const PAGE = 50;

export function Clients() {
  const auth = useAuth();
  const loc = useLocation();
  const qClient = loc.query.get("client_id") ?? "";
  const [prefix, setPrefix] = useState(qClient || (loc.query.get("prefix") ?? ""));
  const [username, setUsername] = useState(loc.query.get("username") ?? "");
  const [paused, setPaused] = useState(false);
  const [selected, setSelected] = useState<string | null>(qClient || null);
  const [kicking, setKicking] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const kick = useAction();
  const cursor = useCursor();
  const p = useDebounced(prefix);
  const u = useDebounced(username);

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
  }, [p, u]);

  const list = useAsync(
    () => api.get<ClientPage>("/api/v1/clients", { prefix: p, username: u, after: cursor.after, limit: PAGE }),
    [p, u, cursor.after],
    paused ? undefined : POLL_MS,
  );
  const updatedAt = useUpdatedAt(list.data);
  const items = list.data?.items ?? [];
  const listed = selected !== null && items.some((c) => c.client_id === selected);
  const filtered = p !== "" || u !== "";

  const doKick = async () => {
    const id = kicking;
    if (!id) return;
    const ok = await kick.run(async () => {
      await api.post(`/api/v1/clients/${seg(id)}/kick`);
      return true;
    });
    setKicking(null);
    if (ok) {
      if (selected === id) setSelected(null);
      setNotice(`Kicked ${id}. Its session stays, per its expiry; it may reconnect (disable the device to keep it out).`);
    }
    list.reload();
  };

  return (
    <Page title="Clients" actions={<LiveToggle paused={paused} onToggle={() => setPaused((x) => !x)} updatedAt={updatedAt} every="3 s" />}>
      {notice && (
        <Notice>
          <span>{notice}</span>
          <button type="button" class="link" onClick={() => setNotice(null)} aria-label="Dismiss notice">
            ×
          </button>
        </Notice>
      )}
      <ErrorBanner error={kick.error} onDismiss={kick.clear} />
      <div class="toolbar" role="search" aria-label="Filter clients">
        <Field label="Client id prefix" id="clients-prefix">
          <input id="clients-prefix" type="search" value={prefix} onInput={(e) => setPrefix(e.currentTarget.value)} autocomplete="off" />
        </Field>
        <Field label="User name" id="clients-user">
          <input id="clients-user" type="search" value={username} onInput={(e) => setUsername(e.currentTarget.value)} autocomplete="off" />
        </Field>
      </div>
      <ErrorBanner error={list.error} />
      {list.loading && !list.data ? (
        <Loading label="Loading clients…" />
      ) : !list.data ? null : items.length === 0 ? (
        <Empty>{filtered ? "No connected client matches these filters." : cursor.hasPrev ? "No more clients." : "No client is connected."}</Empty>
      ) : (
        <div class="table-wrap">
          <table>
            <caption class="vh">Connected clients</caption>
            <thead>
              <tr>
                <th scope="col">Client id</th>
                <th scope="col">User</th>
                <th scope="col">Listener</th>
                <th scope="col">Peer</th>
                <th scope="col">Protocol</th>
                <th scope="col">Keep alive</th>
                <th scope="col">Connected</th>
                <th scope="col" class="num">
                  Queued
                </th>
                <th scope="col" class="num">
                  In flight
                </th>
                <th scope="col">
                  <span class="vh">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((c) => (
                <tr key={c.client_id} class={c.client_id === selected ? "selected" : undefined}>
                  <td>
                    <a href={href(["devices", c.client_id])}>{c.client_id}</a>
                  </td>
                  <td>{c.username ?? <span class="muted">anonymous</span>}</td>
                  <td>{c.listener}</td>
                  <td class="mono">{c.peer}</td>
                  <td>MQTT {protocolName(c.protocol)}</td>
                  <td>{keepAliveText(c.keep_alive)}</td>
                  <td title={when(c.connected_at)}>{ago(c.connected_at)}</td>
                  <td class="num">{c.queued}</td>
                  <td class="num">{c.inflight}</td>
                  <td class="row-actions">
                    <button
                      type="button"
                      class="small"
                      aria-expanded={c.client_id === selected}
                      aria-controls="client-details"
                      aria-label={`Details of ${c.client_id}`}
                      onClick={() => setSelected((s) => (s === c.client_id ? null : c.client_id))}
                    >
                      Details
                    </button>
                    {auth.canOperate && (
                      <button type="button" class="small" aria-label={`Kick ${c.client_id}`} onClick={() => setKicking(c.client_id)}>
                        Kick
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
        <div id="client-details">
          {listed ? (
            <ClientDetails
              key={selected}
              clientId={selected}
              pollMs={paused ? undefined : POLL_MS}
              canOperate={auth.canOperate}
              onKick={() => setKicking(selected)}
              onClose={() => setSelected(null)}
            />
          ) : (
            <section class="card" aria-label={`Client ${selected}`}>
              <p>
                <strong>{selected}</strong> is not connected{filtered || cursor.hasPrev ? " (or not on this page of the list)" : ""}.{" "}
                <a href={href(["sessions"], { client_id: selected })}>Its session</a> ·{" "}
                <a href={href(["devices", selected])}>Its device page</a>
              </p>
              <button type="button" onClick={() => setSelected(null)}>
                Close details
              </button>
            </section>
          )}
        </div>
      )}

      {kicking && (
        <Confirm title={`Kick ${kicking}?`} confirmLabel="Kick" danger busy={kick.busy} onCancel={() => setKicking(null)} onConfirm={doKick}>
          <p>
            The client is disconnected with reason 0x98 (Administrative action; MQTT 3.x clients: the connection is closed). Its will
            message is published and its session stays, per its expiry.
          </p>
          <p>It may reconnect at once: disable its device to keep it out.</p>
        </Confirm>
      )}
    </Page>
  );
}

function ClientDetails(props: { clientId: string; pollMs: number | undefined; canOperate: boolean; onKick: () => void; onClose: () => void }) {
  const h = useRef<HTMLHeadingElement>(null);
  const c = useAsync(() => api.get<Client>(`/api/v1/clients/${seg(props.clientId)}`), [props.clientId], props.pollMs);
  useEffect(() => h.current?.focus(), []);
  const d = c.data;
  return (
    <section class="card" aria-labelledby="client-details-title">
      <div class="card-head">
        <h2 id="client-details-title" tabIndex={-1} ref={h}>
          Client {props.clientId}
        </h2>
        <div class="row-actions">
          {props.canOperate && (
            <button type="button" class="danger" onClick={props.onKick}>
              Kick
            </button>
          )}
          <button type="button" onClick={props.onClose}>
            Close details
          </button>
        </div>
      </div>
      <ErrorBanner error={c.error} />
      {!d ? (
        c.loading ? <Loading /> : null
      ) : (
        <>
          <Facts
            items={[
              ["Client id", <code>{d.client_id}</code>],
              ["User name", d.username ?? "anonymous"],
              ["Status", <Badge kind="ok">Online</Badge>],
              ["Listener", d.listener],
              ["Peer", <span class="mono">{d.peer}</span>],
              ["Protocol", `MQTT ${protocolName(d.protocol)} (level ${d.protocol})`],
              ["Keep alive", keepAliveText(d.keep_alive)],
              ["Connected", `${when(d.connected_at)} (${ago(d.connected_at)})`],
              ["Session", d.persistent ? "persistent (outlives the connection)" : "clean (ends with the connection)"],
              ["Queued", `${d.queued} messages (${bytes(d.queued_bytes)})`],
              ["In flight", `${d.inflight} messages`],
            ]}
          />
          <p class="small">
            <a href={href(["devices", d.client_id])}>Device page</a> · <a href={href(["sessions"], { client_id: d.client_id })}>Session and subscriptions</a> ·{" "}
            <a href={href(["acl"], { client_id: d.client_id })}>ACL rules and access check</a>
          </p>
        </>
      )}
    </section>
  );
}
