// Cluster: the nodes of the cluster as the answering node sees them (`/api/v1/cluster`),
// polled every 3 s (with a pause toggle), with the totals over the live nodes on top. On a
// single node the API says it is not clustered, and so does the page.

import { useState } from "preact/hooks";
import { api, type ClusterNode, type ClusterStatus } from "../api/client";
import { Badge, ErrorBanner, Loading, Notice, Page, Stat } from "../components";
import { useAsync } from "../hooks";
import { headline, lastSeenText, msToIso, stateHint, stateKind } from "../lib/cluster";
import { compact, when } from "../lib/format";
import { LiveToggle, useUpdatedAt } from "./clients/shared";

const POLL_MS = 3000;

export function Cluster() {
  const [paused, setPaused] = useState(false);
  const status = useAsync(() => api.get<ClusterStatus>("/api/v1/cluster"), [], paused ? undefined : POLL_MS);
  const updatedAt = useUpdatedAt(status.data);
  const s = status.data;
  return (
    <Page
      title="Cluster"
      actions={s?.clustered ? <LiveToggle paused={paused} onToggle={() => setPaused((x) => !x)} updatedAt={updatedAt} every="3 s" /> : undefined}
    >
      <ErrorBanner error={status.error} />
      {!s ? (
        status.loading && <Loading label="Loading the cluster…" />
      ) : !s.clustered ? (
        <Notice>
          <div>
            <strong>This broker is not clustered.</strong> It runs as a single node: its figures are on the{" "}
            <a href="#/">Overview</a>. To run several nodes on one PostgreSQL database, see <code>docs/clustering.md</code>.
          </div>
        </Notice>
      ) : (
        <>
          <div class="grid" aria-live="off">
            <Stat
              label="Nodes up"
              value={`${s.totals.nodes_up} / ${s.nodes.length}`}
              tone={s.totals.nodes_up === s.nodes.length ? "ok" : "warn"}
              hint={headline(s.nodes)}
            />
            <Stat label="Clients" value={compact(s.totals.clients)} hint="connected to live nodes" />
            <Stat label="Sessions" value={compact(s.totals.sessions)} />
            <Stat label="Subscriptions" value={compact(s.totals.subscriptions)} />
            <Stat label="Messages in" value={compact(s.totals.messages_received)} hint="since each node started" />
            <Stat label="Messages out" value={compact(s.totals.messages_sent)} hint="since each node started" />
          </div>
          <NodeTable nodes={s.nodes} />
          <p class="muted small">
            As node <strong>{s.this_node ?? "?"}</strong> sees the cluster. Totals add up the nodes that are up or silent; the
            figures of a node that is down or adopted are its last known ones. Message counts are since each node started.
          </p>
        </>
      )}
    </Page>
  );
}

function NodeTable(props: { nodes: ClusterNode[] }) {
  return (
    <div class="table-wrap">
      <table>
        <caption class="vh">Nodes of the cluster</caption>
        <thead>
          <tr>
            <th scope="col">Node</th>
            <th scope="col">State</th>
            <th scope="col">Last seen</th>
            <th scope="col">Started</th>
            <th scope="col" class="num">
              Clients
            </th>
            <th scope="col" class="num">
              Sessions
            </th>
            <th scope="col" class="num">
              Subscriptions
            </th>
            <th scope="col" class="num">
              Messages in
            </th>
            <th scope="col" class="num">
              Messages out
            </th>
            <th scope="col" class="num">
              Forwarded
            </th>
          </tr>
        </thead>
        <tbody>
          {props.nodes.map((n) => (
            <tr key={n.node_id} class={n.this_node ? "selected" : undefined} aria-current={n.this_node ? "true" : undefined}>
              <td title={`MQTT ${n.mqtt_addr}, admin ${n.admin_addr}, node number ${n.node_no}`}>
                {n.this_node ? <strong>{n.node_id}</strong> : n.node_id}
                {n.this_node && <span class="muted small"> (this node)</span>}
              </td>
              <td>
                <span title={stateHint(n.state, n.adopted_by)}>
                  <Badge kind={stateKind(n.state)}>{n.state}</Badge>
                </span>
                {n.adopted_by && <span class="muted small"> by {n.adopted_by}</span>}
              </td>
              <td>{lastSeenText(n.last_seen_ms, n.this_node)}</td>
              <td title={`start ${n.incarnation}`}>{when(msToIso(n.started_at_ms))}</td>
              <td class="num">{compact(n.clients)}</td>
              <td class="num">{compact(n.sessions)}</td>
              <td class="num">{compact(n.subscriptions)}</td>
              <td class="num">{compact(n.messages_received)}</td>
              <td class="num">{compact(n.messages_sent)}</td>
              <td class="num" title={`${n.received_from_nodes} received from other nodes`}>
                {compact(n.forwarded)}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
