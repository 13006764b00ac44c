// The application shell: login gate, navigation, and the route table.

import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api } from "./api/client";
import { AuthContext, authInfo, useAuth } from "./auth";
import { useLocation } from "./hooks";
import { Login } from "./login";
import { match } from "./lib/router";
import { Overview } from "./pages/overview";
import { Devices } from "./pages/devices";
import { DeviceDetailPage } from "./pages/device";
import { Acl } from "./pages/acl";
import { Clients } from "./pages/clients";
import { Sessions } from "./pages/sessions";
import { Topics } from "./pages/topics";
import { AdminUsers } from "./pages/admins";
import { Audit } from "./pages/audit";
import { Cluster } from "./pages/cluster";

interface Route {
  pattern: string;
  render: (p: Record<string, string>) => ComponentChildren;
  adminOnly?: boolean;
}

const ROUTES: Route[] = [
  { pattern: "/", render: () => <Overview /> },
  { pattern: "/devices", render: () => <Devices /> },
  { pattern: "/devices/:id", render: (p) => <DeviceDetailPage clientId={p.id!} /> },
  { pattern: "/acl", render: () => <Acl /> },
  { pattern: "/clients", render: () => <Clients /> },
  { pattern: "/sessions", render: () => <Sessions /> },
  { pattern: "/topics", render: () => <Topics /> },
  { pattern: "/cluster", render: () => <Cluster /> },
  { pattern: "/admin", render: () => <AdminUsers />, adminOnly: true },
  { pattern: "/audit", render: () => <Audit /> },
];

/** Who sees a link: everyone, operators and admins (the API refuses viewers), admins. */
type Audience = "all" | "operator" | "admin";

const NAV: [string, string, Audience][] = [
  ["#/", "Overview", "all"],
  ["#/devices", "Devices", "all"],
  ["#/acl", "ACLs", "all"],
  ["#/clients", "Clients", "all"],
  ["#/sessions", "Sessions", "all"],
  ["#/topics", "Topics", "all"],
  ["#/cluster", "Cluster", "all"],
  ["#/audit", "Audit log", "operator"],
  ["#/admin", "Admin users", "admin"],
];

export function App() {
  const [signedIn, setSignedIn] = useState(api.signedIn);
  const [expired, setExpired] = useState(false);
  useEffect(
    () =>
      api.onChange((now) => {
        setExpired((was) => (!now && !loggingOut ? true : was && !now));
        setSignedIn(now);
      }),
    [],
  );
  if (!signedIn || !api.role || !api.username) return <Login expired={expired} />;
  return (
    <AuthContext.Provider value={authInfo(api.username, api.role)}>
      <Shell />
    </AuthContext.Provider>
  );
}

/** Set while the user logs out on purpose (so the login page does not say "expired"). */
let loggingOut = false;

function Shell() {
  const loc = useLocation();
  const auth = useAuth();
  const found = ROUTES.map((r) => ({ r, p: match(r.pattern, loc.path) })).find((x) => x.p !== null);
  const logout = async () => {
    loggingOut = true;
    try {
      await api.logout();
    } catch {
      // The local session is gone either way.
    } finally {
      loggingOut = false;
    }
  };
  const active = (link: string) => (link === "#/" ? loc.path === "/" : ("#" + loc.path).startsWith(link));
  return (
    <div class="shell">
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), document.getElementById("main")?.focus())}>
        Skip to content
      </a>
      <header class="top">
        <span class="brand">
          <span class="logo" aria-hidden="true">◆</span> Tern
        </span>
        <nav aria-label="Main">
          <ul>
            {NAV.filter(([, , who]) => who === "all" || (who === "operator" ? auth.canOperate : auth.isAdmin)).map(([link, label]) => (
              <li key={link}>
                <a href={link} aria-current={active(link) ? "page" : undefined}>
                  {label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who">
          <span>
            {auth.username} <span class="muted">({auth.role})</span>
          </span>
          <button type="button" onClick={logout}>
            Log out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {!found ? (
          <p class="empty">No such page. <a href="#/">Go to the overview.</a></p>
        ) : found.r.adminOnly && !auth.isAdmin ? (
          <p class="empty">This page is for admins.</p>
        ) : (
          found.r.render(found.p!)
        )}
      </main>
    </div>
  );
}
