// Devices: a searchable, filterable, cursor-paginated list with live status (polled), and the
// create wizard (`#/devices?new`, operators only).

import { useEffect, useState } from "preact/hooks";
import { api, type DevicePage } from "../api/client";
import { useAuth } from "../auth";
import { Empty, ErrorBanner, Field, Loading, Page, Pager, useCursor } from "../components";
import { useAsync, useLocation } from "../hooks";
import { go, href } from "../lib/router";
import { CreateDeviceWizard } from "./devices/wizard";
import { Credentials, DeviceStatus, Labels } from "./devices/status";

const PAGE_SIZE = 50;
const POLL_MS = 5000;
const DEBOUNCE_MS = 300;

type EnabledFilter = "" | "true" | "false";

/** `value`, once it has not changed for `ms`. */
function useDebounced<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setV(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return v;
}

export function Devices() {
  const loc = useLocation();
  const auth = useAuth();
  const creating = auth.canOperate && loc.query.has("new");
  if (creating) {
    return (
      <Page title="New device">
        <CreateDeviceWizard onCancel={() => go("#/devices")} />
      </Page>
    );
  }
  return <DeviceList />;
}

function NewDeviceButton() {
  return (
    <button type="button" class="primary" onClick={() => go("#/devices?new")}>
      New device
    </button>
  );
}

function DeviceList() {
  const auth = useAuth();
  const [search, setSearch] = useState("");
  const [enabled, setEnabled] = useState<EnabledFilter>("");
  const [label, setLabel] = useState("");
  const q = useDebounced(search.trim(), DEBOUNCE_MS);
  const labelQ = useDebounced(label.trim(), DEBOUNCE_MS);
  const labelValid = labelQ === "" || labelQ.includes("=");
  const cur = useCursor();
  const list = useAsync<DevicePage>(
    () =>
      api.get<DevicePage>("/api/v1/devices", {
        search: q,
        enabled: enabled || undefined,
        label: labelValid ? labelQ : undefined,
        after: cur.after,
        limit: PAGE_SIZE,
      }),
    [q, enabled, labelQ, cur.after],
    POLL_MS,
  );
  const filtered = q !== "" || enabled !== "" || (labelValid && labelQ !== "");
  const items = list.data?.items ?? [];
  const none = !!list.data && items.length === 0 && !filtered && !cur.hasPrev;
  // One "New device" button at a time: in the header, or in the empty state.
  return (
    <Page title="Devices" actions={auth.canOperate && !none ? <NewDeviceButton /> : undefined}>
      <form class="toolbar devices-filter" role="search" aria-label="Filter devices" onSubmit={(e) => e.preventDefault()}>
        <Field label="Search" id="devices-search">
          <input
            id="devices-search"
            type="search"
            placeholder="Client id or user name"
            value={search}
            onInput={(e) => {
              setSearch(e.currentTarget.value);
              cur.reset();
            }}
          />
        </Field>
        <Field label="Status" id="devices-enabled">
          <select
            id="devices-enabled"
            value={enabled}
            onChange={(e) => {
              setEnabled(e.currentTarget.value as EnabledFilter);
              cur.reset();
            }}
          >
            <option value="">All</option>
            <option value="true">Enabled only</option>
            <option value="false">Disabled only</option>
          </select>
        </Field>
        <Field label="Label" id="devices-label" hint={labelValid ? undefined : "Write it as key=value."}>
          <input
            id="devices-label"
            placeholder="key=value"
            value={label}
            aria-invalid={!labelValid}
            aria-describedby={labelValid ? undefined : "devices-label-hint"}
            onInput={(e) => {
              setLabel(e.currentTarget.value);
              cur.reset();
            }}
          />
        </Field>
        {list.loading && list.data && <span class="muted small" role="status">Updating…</span>}
      </form>
      <ErrorBanner error={list.error} />
      {!list.data ? (
        list.loading ? <Loading label="Loading devices…" /> : null
      ) : items.length === 0 ? (
        !none ? (
          <Empty>No devices match these filters.</Empty>
        ) : (
          <div class="empty">
            <p>No devices yet.</p>
            {auth.canOperate ? (
              <>
                <p>Provision the first one: it gets a client id, a generated password and ready-to-paste examples.</p>
                <NewDeviceButton />
              </>
            ) : (
              <p>An operator can provision devices here or with <code>tern device add</code>.</p>
            )}
          </div>
        )
      ) : (
        <>
          <table class="devices" aria-label="Devices">
            <thead>
              <tr>
                <th scope="col">Client id</th>
                <th scope="col">User name</th>
                <th scope="col">Credentials</th>
                <th scope="col">Labels</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              {items.map((d) => (
                <tr key={d.client_id}>
                  <td>
                    <a href={href(["devices", d.client_id])} class="mono">
                      {d.client_id}
                    </a>
                  </td>
                  <td>{d.username ? <span class="mono">{d.username}</span> : <span class="muted">–</span>}</td>
                  <td>
                    <Credentials device={d} />
                  </td>
                  <td>
                    <Labels labels={d.labels} />
                  </td>
                  <td>
                    <DeviceStatus device={d} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager hasPrev={cur.hasPrev} next={list.data.next} onPrev={cur.prev} onNext={cur.next} />
        </>
      )}
    </Page>
  );
}
