// Small pieces shared by the device list and the device page: status badges, labels and
// credential kinds.

import type { Device } from "../../api/client";
import { Badge } from "../../components";
import { ago } from "../../lib/format";
import { credentialKinds } from "../../lib/snippets";

/** Online/offline (with "last seen" when known) and "disabled": text, not colour only. */
export function DeviceStatus(props: { device: Device }) {
  const d = props.device;
  return (
    <span class="device-status">
      {d.online ? <Badge kind="ok">online</Badge> : <Badge kind="off">offline</Badge>}
      {!d.enabled && <Badge kind="bad">disabled</Badge>}
      {!d.online && d.last_seen && <span class="muted small">last seen {ago(d.last_seen)}</span>}
    </span>
  );
}

/** Labels as `key=value` chips. */
export function Labels(props: { labels: Record<string, string> | undefined }) {
  const entries = Object.entries(props.labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (!entries.length) return <span class="muted">–</span>;
  return (
    <ul class="labels" aria-label="Labels">
      {entries.map(([k, v]) => (
        <li key={k}>
          <code>
            {k}={v}
          </code>
        </li>
      ))}
    </ul>
  );
}

/** "password, SCRAM, certificate" or "none". */
export function Credentials(props: { device: Device }) {
  const kinds = credentialKinds(props.device);
  return kinds.length ? <>{kinds.join(", ")}</> : <span class="muted">none</span>;
}
