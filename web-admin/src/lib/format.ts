// Number, byte and time formatting shared by the pages.

/** `1234567` → `1.23M`; small numbers as they are (fractions with 2 digits below 1, 1 below 10). */
export function compact(n: number): string {
  if (!Number.isFinite(n)) return "–";
  const a = Math.abs(n);
  // Each unit's figure is rounded first, so 999,999 reads `1.00M`, not `1000.0k`.
  if (a >= 999_995_000) return (n / 1e9).toFixed(2) + "G";
  if (a >= 999_950) return (n / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  if (Number.isInteger(n)) return String(n);
  return n.toFixed(a < 1 ? 2 : a < 10 ? 1 : 0);
}

/** Bytes in binary units. */
export function bytes(n: number): string {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  // Move up while the figure would print as 1024 or more (1,048,575 B is `1.0 MiB`, not `1024 KiB`).
  while (i < units.length - 1 && Math.abs(i === 0 ? v : Number(v.toFixed(v < 10 ? 1 : 0))) >= 1024) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(Math.abs(v) < 10 ? 1 : 0)} ${units[i]}`;
}

/** A duration in seconds as `3d 4h`, `5m 2s`, `42s`. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

/** How long ago an RFC 3339 time was, relative to `now` (ms). */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = (now - t) / 1000;
  if (s < 5) return "just now";
  return `${duration(s)} ago`;
}

/** A local date-time for tables. */
export function when(iso: string | null | undefined): string {
  if (!iso) return "–";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? iso : t.toLocaleString();
}

/** Rate of a counter between two readings, per second (0 when it went backwards: a restart). */
export function rate(prev: number, next: number, seconds: number): number {
  if (seconds <= 0 || next < prev) return 0;
  return (next - prev) / seconds;
}
