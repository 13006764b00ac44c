// The typed client of the admin API. Types come from openapi/tern.json (`npm run gen:api`
// writes src/api/schema.d.ts; a unit test fails when it is stale). Every call goes through
// `request`, which adds the access token, refreshes it once on 401 and turns problem+json
// answers into `ApiError`s the pages show as they are.

import type { components } from "./schema";
import { ApiError, problemFromResponse } from "../lib/problem";

export type Schemas = components["schemas"];
export type Role = Schemas["Role"];
export type Me = Schemas["Me"];
export type Metrics = Schemas["Metrics"];
export type Device = Schemas["Device"];
export type DeviceDetail = Schemas["DeviceDetail"];
export type DevicePage = Schemas["DevicePage"];
export type CreatedDevice = Schemas["CreatedDevice"];
export type Client = Schemas["Client"];
export type ClientPage = Schemas["ClientPage"];
export type Session = Schemas["Session"];
export type SessionPage = Schemas["SessionPage"];
export type AclRule = Schemas["AclRule"];
export type AclRuleBody = Schemas["AclRuleBody"];
export type AclCheckRequest = Schemas["AclCheckRequest"];
export type AclCheckResult = Schemas["AclCheckResult"];
export type TopicStat = Schemas["TopicStat"];
export type TopicList = Schemas["TopicList"];
export type Retained = Schemas["Retained"];
export type RetainedPage = Schemas["RetainedPage"];
export type PublishRequest = Schemas["PublishRequest"];
export type PublishResult = Schemas["PublishResult"];
export type AdminUserItem = Schemas["AdminUserItem"];
export type ApiKeyItem = Schemas["ApiKeyItem"];
export type CreatedApiKey = Schemas["CreatedApiKey"];
export type CreatedAdminUser = Schemas["CreatedAdminUser"];
export type AuditItem = Schemas["AuditItem"];
export type AuditPage = Schemas["AuditPage"];
export type TokenResponse = Schemas["TokenResponse"];
export type Readiness = Schemas["Readiness"];
export type ClusterStatus = Schemas["ClusterStatus"];
export type ClusterNode = Schemas["ClusterNode"];

export { ApiError };

const STORAGE_KEY = "tern.session";

/** The tokens of the logged-in user, kept in sessionStorage (one tab, gone with it). */
interface Tokens {
  access: string;
  refresh: string;
  role: Role;
  username: string;
}

type Listener = (signedIn: boolean) => void;

/** The API client: one per page load (`api`). */
export class Api {
  private tokens: Tokens | null;
  private refreshing: Promise<boolean> | null = null;
  private listeners = new Set<Listener>();

  constructor(private readonly base = "") {
    this.tokens = load();
  }

  get signedIn(): boolean {
    return this.tokens !== null;
  }

  get role(): Role | null {
    return this.tokens?.role ?? null;
  }

  get username(): string | null {
    return this.tokens?.username ?? null;
  }

  /** Calls `f` whenever the user signs in or out (or the session expires). */
  onChange(f: Listener): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  async login(username: string, password: string): Promise<void> {
    const t = await this.request<TokenResponse>("POST", "/api/v1/auth/login", { username, password }, { auth: false });
    this.setTokens({ access: t.access_token, refresh: t.refresh_token, role: t.role, username });
  }

  async logout(): Promise<void> {
    const refresh = this.tokens?.refresh;
    try {
      if (refresh) await this.request("POST", "/api/v1/auth/logout", { refresh_token: refresh });
    } finally {
      this.setTokens(null);
    }
  }

  /** Forgets the session without telling the server (it expired or was revoked). */
  expire(): void {
    this.setTokens(null);
  }

  get<T>(path: string, query?: Record<string, string | number | boolean | undefined | null>): Promise<T> {
    return this.request<T>("GET", withQuery(path, query));
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>("POST", path, body);
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>("PUT", path, body);
  }

  patch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>("PATCH", path, body);
  }

  del<T = void>(path: string): Promise<T> {
    return this.request<T>("DELETE", path);
  }

  /** A streaming GET (server-sent events) with the access token; the caller reads the body. */
  async stream(path: string, signal: AbortSignal): Promise<Response> {
    let res = await fetch(this.base + path, { headers: this.headers(true, false), signal });
    if (res.status === 401 && (await this.refresh())) {
      res = await fetch(this.base + path, { headers: this.headers(true, false), signal });
    }
    if (!res.ok) throw await this.failure(res);
    return res;
  }

  async request<T>(method: string, path: string, body?: unknown, opts: { auth?: boolean } = {}): Promise<T> {
    const auth = opts.auth ?? true;
    const send = () =>
      fetch(this.base + path, {
        method,
        headers: this.headers(auth, body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    let res = await send();
    if (res.status === 401 && auth && this.tokens && (await this.refresh())) {
      res = await send();
    }
    if (!res.ok) throw await this.failure(res);
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private headers(auth: boolean, json: boolean): Record<string, string> {
    const h: Record<string, string> = { Accept: "application/json" };
    if (json) h["Content-Type"] = "application/json";
    if (auth && this.tokens) h["Authorization"] = `Bearer ${this.tokens.access}`;
    return h;
  }

  private async failure(res: Response): Promise<ApiError> {
    const err = await problemFromResponse(res);
    if (res.status === 401 && this.tokens) {
      // The refresh failed too: the login is over (expired, revoked, or logged out elsewhere).
      this.setTokens(null);
    }
    return err;
  }

  /** Exchanges the refresh token for a new pair, once for all concurrent callers. */
  private refresh(): Promise<boolean> {
    if (!this.refreshing) {
      const tokens = this.tokens;
      this.refreshing = (async () => {
        if (!tokens) return false;
        try {
          const res = await fetch(this.base + "/api/v1/auth/refresh", {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "application/json" },
            body: JSON.stringify({ refresh_token: tokens.refresh }),
          });
          if (!res.ok) return false;
          const t = (await res.json()) as TokenResponse;
          this.setTokens({ access: t.access_token, refresh: t.refresh_token, role: t.role, username: tokens.username }, false);
          return true;
        } catch {
          return false;
        } finally {
          this.refreshing = null;
        }
      })();
    }
    return this.refreshing;
  }

  private setTokens(t: Tokens | null, notify = true): void {
    const before = this.tokens !== null;
    this.tokens = t;
    try {
      if (t) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(t));
      else sessionStorage.removeItem(STORAGE_KEY);
    } catch {
      // Storage may be unavailable (private mode): the session lives in memory only.
    }
    if (notify || before !== (t !== null)) for (const f of this.listeners) f(t !== null);
  }
}

function load(): Tokens | null {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    return raw ? (JSON.parse(raw) as Tokens) : null;
  } catch {
    return null;
  }
}

/** `path` with the defined query parameters appended. */
export function withQuery(path: string, query?: Record<string, string | number | boolean | undefined | null>): string {
  if (!query) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** Encodes one path segment (client ids and topics may hold `/`, `#`, spaces). */
export function seg(s: string): string {
  return encodeURIComponent(s);
}

export const api = new Api();
