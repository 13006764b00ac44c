// The audit log page's logic: time filters, the fields an entry changed, and where its target
// lives in the UI.

/**
 * A `datetime-local` input's value (local time, `2025-01-31T14:05`) as Unix milliseconds, or
 * undefined when empty or invalid.
 */
export function localToMillis(v: string): number | undefined {
  if (!v) return undefined;
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(v);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s] = m;
  const t = new Date(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s ?? 0)).getTime();
  return Number.isNaN(t) ? undefined : t;
}

/** Unix milliseconds as a `datetime-local` value in local time (minutes). */
export function millisToLocal(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return !!v && typeof v === "object" && !Array.isArray(v);
}

/** A field an entry changed: its path (`labels.site`), the value before and after. */
export interface Change {
  field: string;
  before: unknown;
  after: unknown;
}

/**
 * The fields that differ between `detail.before` and `detail.after` (nested objects by dotted
 * path; arrays compared whole). Empty when the detail has no before/after pair.
 */
export function changes(detail: unknown): Change[] {
  if (!isObject(detail) || !("before" in detail) || !("after" in detail)) return [];
  const out: Change[] = [];
  const walk = (a: unknown, b: unknown, path: string) => {
    if (isObject(a) && isObject(b)) {
      const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
      for (const k of keys) walk(a[k], b[k], path ? `${path}.${k}` : k);
      return;
    }
    if (JSON.stringify(a) !== JSON.stringify(b)) out.push({ field: path || "(value)", before: a, after: b });
  };
  walk(detail.before, detail.after, "");
  return out;
}

/** A value for a one-line summary: JSON, with `undefined` as "(none)". */
export function short(v: unknown): string {
  if (v === undefined) return "(none)";
  const s = JSON.stringify(v);
  return s.length > 80 ? s.slice(0, 77) + "…" : s;
}

/**
 * Where a target lives in the UI, as route parts and query for `href`: `device:<id>` → the
 * device page, `acl:<id>` → the ACL page with that rule highlighted, `session:<id>` and
 * `client:<id>` → the sessions and clients pages, `admin:`/`apikey:` → admin users. Null for
 * anything else.
 */
export function targetRoute(target: string | null | undefined): { parts: string[]; query?: Record<string, string> } | null {
  if (!target) return null;
  const i = target.indexOf(":");
  if (i < 0) return null;
  const kind = target.slice(0, i);
  const id = target.slice(i + 1);
  if (!id) return null;
  switch (kind) {
    case "device":
      return { parts: ["devices", id] };
    case "acl":
      return /^\d+$/.test(id) ? { parts: ["acl"], query: { rule: id } } : null;
    case "session":
      return { parts: ["sessions"], query: { client_id: id } };
    case "client":
      return { parts: ["clients"], query: { client_id: id } };
    case "admin":
    case "apikey":
      return { parts: ["admin"] };
    case "retained":
      return { parts: ["topics"] };
    default:
      return null;
  }
}
