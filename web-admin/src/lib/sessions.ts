// Wording for the Clients and Sessions pages: protocol levels, keep alive, session expiry and
// subscription options.

/** MQTT protocol level → version: 3 → "3.1", 4 → "3.1.1", 5 → "5.0". */
export function protocolName(level: number): string {
  switch (level) {
    case 3:
      return "3.1";
    case 4:
      return "3.1.1";
    case 5:
      return "5.0";
    default:
      return `level ${level}`;
  }
}

/** Seconds as "42 s", "5 min", "2 h 30 min", "3 d 4 h" (exact, for configured intervals). */
export function interval(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  const parts: string[] = [];
  if (d) parts.push(`${d} d`);
  if (h) parts.push(`${h} h`);
  if (m) parts.push(`${m} min`);
  if (rest) parts.push(`${rest} s`);
  return parts.slice(0, 2).join(" ");
}

/** Keep alive in force: 0 means none. */
export function keepAliveText(seconds: number): string {
  return seconds === 0 ? "none" : interval(seconds);
}

/** The fields of a session its expiry depends on. */
export interface ExpiryFields {
  persistent: boolean;
  online: boolean;
  expiry_interval?: number | null;
  offline_for_secs?: number | null;
}

/**
 * A session's expiry in words: "never", "ends with the connection", "1 h after disconnect"
 * (online), "in 42 min" (offline, counting down), "due now" (offline, past its interval).
 */
export function expiryText(s: ExpiryFields): string {
  if (s.expiry_interval == null) return "never";
  if (!s.persistent || s.expiry_interval === 0) return "ends with the connection";
  if (s.online) return `${interval(s.expiry_interval)} after disconnect`;
  const left = s.expiry_interval - (s.offline_for_secs ?? 0);
  return left > 0 ? `in ${interval(left)}` : "due now";
}

/** Retain Handling 0, 1, 2 in words. */
export function retainHandlingText(rh: number): string {
  switch (rh) {
    case 0:
      return "send retained on subscribe";
    case 1:
      return "send retained if new subscription";
    case 2:
      return "never send retained";
    default:
      return `retain handling ${rh}`;
  }
}

/** The options of a subscription beyond its QoS, as short labels. */
export function subscriptionOptions(s: { no_local: boolean; retain_as_published: boolean; retain_handling: number }): string[] {
  const out: string[] = [];
  if (s.no_local) out.push("No Local");
  if (s.retain_as_published) out.push("Retain As Published");
  out.push(retainHandlingText(s.retain_handling));
  return out;
}

/** The shared-subscription group of a filter (`$share/g/a/b` → `g`), or null. */
export function shareGroup(filter: string): string | null {
  const m = /^\$share\/([^/]+)\//.exec(filter);
  return m ? m[1]! : null;
}
