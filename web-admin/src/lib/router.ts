// A hash router: `#/devices/dev-1?tab=acl` → route `/devices/dev-1`, query `tab=acl`. Hash
// routes need no server rewrite rules: the admin listener serves index.html at `/` only.

export interface Location {
  path: string;
  query: URLSearchParams;
}

/** The current location from `location.hash`. */
export function current(hash: string): Location {
  const h = hash.startsWith("#") ? hash.slice(1) : hash;
  const [path, q] = h.split("?", 2) as [string, string | undefined];
  return { path: path || "/", query: new URLSearchParams(q ?? "") };
}

/** Matches `path` against a pattern such as `/devices/:id`; returns the decoded params. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const p = pattern.split("/");
  const s = path.split("/");
  if (p.length !== s.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < p.length; i++) {
    const a = p[i]!;
    const b = s[i]!;
    if (a.startsWith(":")) {
      try {
        params[a.slice(1)] = decodeURIComponent(b);
      } catch {
        return null;
      }
    } else if (a !== b) {
      return null;
    }
  }
  return params;
}

/** The hash link of a route (`href(["devices", id])` → `#/devices/<id encoded>`). */
export function href(parts: string[], query?: Record<string, string>): string {
  const path = "#/" + parts.map(encodeURIComponent).join("/");
  const q = query ? new URLSearchParams(query).toString() : "";
  return q ? `${path}?${q}` : path;
}

/** Navigates to a hash link. */
export function go(link: string): void {
  if (location.hash !== link) location.hash = link;
}
