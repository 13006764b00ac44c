// Wording for the Cluster page: node states as badges, heartbeat ages, and the headline.

/** A node's state, as the API words it (docs/clustering.md, "Membership, liveness"). */
export type NodeState = "up" | "silent" | "down" | "adopted";

/** The badge kind of a state: up is fine, silent is a warning, down is bad, adopted is over. */
export function stateKind(state: string): "ok" | "warn" | "bad" | "off" {
  switch (state) {
    case "up":
      return "ok";
    case "silent":
      return "warn";
    case "down":
      return "bad";
    default:
      return "off";
  }
}

/** What a state means, for the badge's title. */
export function stateHint(state: string, adoptedBy?: string | null): string {
  switch (state) {
    case "up":
      return "Heartbeats arrive";
    case "silent":
      return "No heartbeat for a while; its lease is still valid";
    case "down":
      return "Its lease expired";
    case "adopted":
      return adoptedBy ? `Dead; its sessions were taken over by ${adoptedBy}` : "Dead; its sessions were taken over";
    default:
      return state;
  }
}

/** Whether a node's figures count in the totals (up or silent). */
export function isLive(state: string): boolean {
  return state === "up" || state === "silent";
}

/** The age of a node's last heartbeat: "this node", "never", "0.8 s ago", "2m 5s ago". */
export function lastSeenText(ms: number | null | undefined, thisNode = false): string {
  if (thisNode) return "this node";
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return `${(ms / 1000).toFixed(1)} s ago`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s ago`;
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h ago`;
  if (h) return `${h}h ${m}m ago`;
  return `${m}m ${s % 60}s ago`;
}

/** Milliseconds since the epoch as an ISO time (for the shared `when` formatter); null if unset. */
export function msToIso(ms: number | null | undefined): string | null {
  if (ms === null || ms === undefined || ms <= 0) return null;
  const t = new Date(ms);
  return Number.isNaN(t.getTime()) ? null : t.toISOString();
}

/** "3 of 4 nodes up" (with silent ones named: "2 of 4 nodes up, 1 silent"). */
export function headline(nodes: { state: string }[]): string {
  const up = nodes.filter((n) => n.state === "up").length;
  const silent = nodes.filter((n) => n.state === "silent").length;
  const base = `${up} of ${nodes.length} node${nodes.length === 1 ? "" : "s"} up`;
  return silent ? `${base}, ${silent} silent` : base;
}
