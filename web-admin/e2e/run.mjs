#!/usr/bin/env node
// Browser tests of the admin web UI against the real `tern` binary (issue 19), driven by
// playwright-core and Debian's chromium (headless). Run by `scripts/test.sh e2e` after the build
// step, or by hand: `cd web-admin && npm run e2e` (after `npm run build` and
// `cargo build -p tern-server`, so the binary embeds the current bundle).
//
// One broker per run, in a temporary directory: SQLite store, MQTT and admin API on free
// loopback ports, devices must authenticate (allow_anonymous = false) and ACLs default to deny,
// per-topic statistics on. Users `admin`, `operator` and `viewer` are created with
// `tern admin add-user` before it starts.
//
// The scenario: log in (a wrong password first), overview, provision a device through the
// wizard, connect it with mosquitto_pub using the credentials the wizard shows, see it online in
// Clients and on its device page, add an ACL rule and see the check-access form agree, publish
// from the device (retained) and see the message in the live view and the retained viewer,
// publish from the UI, sessions, kick the client, disable the device (its reconnect is refused),
// set its own limits on its page, admin users, audit log, the Cluster page (a single node: "not
// clustered"), log out; an operator sees no
// admin-user page; a viewer sees no write controls; an expired access token is refreshed, a
// revoked session returns to the login page.
// Every step fails on any console error, uncaught page error, failed request, request to another
// origin, or HTTP answer >= 400 that it did not ask for (the deliberate ones: the wrong
// password's 401 and the revoked session's 401s, allowed by name in their steps). Then: the time
// to first render of the overview over 5 loads (cache disabled and warm), and the gzip size of
// the bundle the binary serves.
//
// Output: a screenshot of every page (1280x800) in e2e/out/screenshots/ (and docs/screenshots/
// with --update-screenshots or TERN_E2E_UPDATE_SCREENSHOTS=1), e2e/out/summary.json, the
// broker's log in e2e/out/tern.log, and a closing line `e2e: N passed, M failed, K skipped`.
//
// Env: TERN_BIN (default <target dir>/debug/tern), TERN_E2E_CHROMIUM (default /usr/bin/chromium),
//      TERN_E2E_HEADED=1 (show the browser), TERN_E2E_SLOWMO=ms, TERN_E2E_UPDATE_SCREENSHOTS=1.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = path.resolve(WEB, "..");
const OUT = path.join(WEB, "e2e", "out");
const SHOTS = path.join(OUT, "screenshots");
const DOC_SHOTS = path.join(ROOT, "docs", "screenshots");
const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, "target");
const BIN = process.env.TERN_BIN || path.join(TARGET, "debug", "tern");
const CHROMIUM = process.env.TERN_E2E_CHROMIUM || "/usr/bin/chromium";
const HEADED = process.env.TERN_E2E_HEADED === "1";
const SLOWMO = Number(process.env.TERN_E2E_SLOWMO || 0);
const UPDATE_DOC_SHOTS = process.argv.includes("--update-screenshots") || process.env.TERN_E2E_UPDATE_SCREENSHOTS === "1";
const VIEWPORT = { width: 1280, height: 800 };
/** How long a UI expectation may take (the test machine may be busy). */
const TIMEOUT = 15_000;
const LOADS = 5;

const USERS = {
  admin: { username: "admin", role: "admin", password: "e2e-admin-password-1" },
  operator: { username: "operator", role: "operator", password: "e2e-operator-password-1" },
  viewer: { username: "viewer", role: "viewer", password: "e2e-viewer-password-1" },
};
const DEVICE = { clientId: "sensor-e2e-1", username: "sensor-e2e-1", labels: "site=berlin, floor=2" };
const PAYLOAD = '{"temp":21.5,"unit":"C"}';
/** A second client, set up through the API: a persistent subscriber to devices/# (so Clients,
 * Sessions and the overview have something to show, and publishes have a receiver). */
const DASHBOARD = { clientId: "dashboard-1", username: "dashboard-1" };

// ---------------------------------------------------------------------------------------------
// results
// ---------------------------------------------------------------------------------------------

const results = []; // { name, status: "passed"|"failed"|"skipped", ms, error? }
const summary = { startedAt: new Date().toISOString(), steps: results, screenshots: [], problems: [], allowed: [] };

function log(...a) {
  console.log(...a);
}

/** Console errors, page errors, failed requests and unexpected HTTP errors since the last check. */
const problems = [];
/** Deliberate HTTP errors for the current step: { status, method, path } (path: pathname). */
let allowed = [];
let abortedRequests = 0;

function watch(page, who, origin) {
  const isAllowedUrl = (url, status) => {
    let p;
    try {
      p = new URL(url).pathname;
    } catch {
      return false;
    }
    return allowed.some((a) => pathMatches(a, p) && (status === undefined || a.status === status));
  };
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    const url = msg.location()?.url ?? "";
    // Chromium logs every HTTP error answer as "Failed to load resource: ... status of 401".
    const m = /^Failed to load resource: the server responded with a status of (\d+)/.exec(text);
    if (m && isAllowedUrl(url, Number(m[1]))) {
      summary.allowed.push({ who, kind: "console", text, url });
      return;
    }
    problems.push({ who, kind: "console error", text, url });
  });
  // The UI makes no external request (fonts and icons are bundled; the CSP would block them).
  page.on("request", (req) => {
    const u = req.url();
    if (/^(data|blob|about):/.test(u) || new URL(u).origin === origin) return;
    problems.push({ who, kind: "external request", text: `${req.method()} ${u}` });
  });
  page.on("pageerror", (err) => problems.push({ who, kind: "page error", text: String(err?.stack || err) }));
  page.on("requestfailed", (req) => {
    const why = req.failure()?.errorText ?? "";
    // Aborted by the page itself (leaving the live view ends its stream; a navigation cancels
    // a poll in flight): not a failure of the server or the network.
    if (why === "net::ERR_ABORTED") {
      abortedRequests++;
      return;
    }
    problems.push({ who, kind: "request failed", text: `${req.method()} ${req.url()}: ${why}` });
  });
  page.on("response", (res) => {
    if (res.status() < 400) return;
    const req = res.request();
    const p = new URL(res.url()).pathname;
    const hit = allowed.find((a) => a.status === res.status() && pathMatches(a, p) && (!a.method || a.method === req.method()));
    if (hit) {
      summary.allowed.push({ who, kind: "http", text: `${res.status()} ${req.method()} ${p}` });
      return;
    }
    problems.push({ who, kind: "http error", text: `${res.status()} ${req.method()} ${res.url()}` });
  });
}

/** An allow-list entry names a `path`, or every path under a `prefix`. */
const pathMatches = (a, p) => (a.path !== undefined ? a.path === p : p.startsWith(a.prefix));

let skipRest = false;
let currentPage = null;

/** Runs one step: fails on an exception or on any problem the page reported meanwhile. */
async function step(name, fn, opts = {}) {
  if (skipRest && !opts.always) {
    results.push({ name, status: "skipped", ms: 0 });
    log(`  - ${name} (skipped)`);
    return false;
  }
  allowed = opts.allow ?? [];
  const t0 = performance.now();
  let error = null;
  try {
    await fn();
    // Let late console messages and answers of this step arrive before judging it.
    await sleep(150);
  } catch (e) {
    error = e;
  }
  allowed = [];
  const seen = problems.splice(0);
  summary.problems.push(...seen.map((p) => ({ step: name, ...p })));
  const ms = Math.round(performance.now() - t0);
  if (!error && seen.length) {
    error = new Error(`${seen.length} problem(s) in the browser:\n` + seen.map((p) => `      [${p.who}] ${p.kind}: ${p.text}${p.url ? ` (${p.url})` : ""}`).join("\n"));
  }
  if (error) {
    results.push({ name, status: "failed", ms, error: String(error?.stack || error) });
    log(`  ✗ ${name} (${ms} ms)\n    ${String(error?.message || error).split("\n").join("\n    ")}`);
    if (currentPage) {
      const f = path.join(OUT, `failure-${slug(name)}.png`);
      await currentPage.screenshot({ path: f, fullPage: true }).catch(() => {});
      log(`    screenshot: ${path.relative(ROOT, f)}`);
    }
    if (opts.critical !== false) skipRest = true;
    return false;
  }
  results.push({ name, status: "passed", ms });
  log(`  ✓ ${name} (${ms} ms)`);
  return true;
}

const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** Polls `f` until it returns a truthy value (returned) or the time is up (throws `what`). */
async function eventually(what, f, timeout = TIMEOUT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms: ${what}${last ? ` (${last.message})` : ""}`);
    await sleep(200);
  }
}

/** Waits until the locator is visible. */
async function visible(locator, what, timeout = TIMEOUT) {
  try {
    await locator.first().waitFor({ state: "visible", timeout });
  } catch {
    throw new Error(`not visible within ${timeout} ms: ${what}`);
  }
  return locator.first();
}

async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  // Let charts and lists settle (no animation in the app; fonts are bundled).
  await page.evaluate(() => document.fonts?.ready);
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  summary.screenshots.push(name);
}

// ---------------------------------------------------------------------------------------------
// the broker and the device (mosquitto clients)
// ---------------------------------------------------------------------------------------------

/** The environment without any TERN_* variable (tern refuses unknown ones), plus `extra`. */
function ternEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TERN_")) env[k] = v;
  return { ...env, NO_COLOR: "1", ...extra };
}

async function startTern() {
  assert(existsSync(BIN), `no tern binary at ${BIN}: run \`cargo build -p tern-server\` (or set TERN_BIN)`);
  const dir = mkdtempSync(path.join(tmpdir(), "tern-ui-e2e-"));
  const env = ternEnv({
    TERN_DATABASE__URL: "sqlite://tern.db",
    TERN_MQTT_ADDR: "127.0.0.1:0",
    TERN_ADMIN__ADDR: "127.0.0.1:0",
    // Devices authenticate with the credentials the wizard shows; nothing is allowed until a
    // rule says so (docs/security.md).
    TERN_ALLOW_ANONYMOUS: "false",
    TERN_AUTH__ACL_DEFAULT: "deny",
    TERN_LIMITS__TOPIC_STATS_CAPACITY: "1024",
  });
  for (const u of Object.values(USERS)) {
    const r = spawnSync(BIN, ["admin", "add-user", "--username", u.username, "--role", u.role, "--password-stdin"], {
      cwd: dir,
      env,
      input: u.password + "\n",
      encoding: "utf8",
    });
    assert(r.status === 0, `tern admin add-user ${u.username} failed (${r.status}): ${r.stderr}${r.stdout}`);
  }
  const child = spawn(BIN, ["serve"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  let logText = "";
  const onData = (b) => (logText += b.toString());
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  let exited = null;
  child.on("exit", (code, sig) => (exited = `exit ${code ?? sig}`));
  const addrs = await eventually(
    "tern to log `admin API listening addr=` and `MQTT listener ready ... addr=`",
    () => {
      if (exited) throw new Error(`tern ${exited}:\n${logText}`);
      const a = /admin API listening addr=(\S+)/.exec(logText);
      const m = /MQTT listener ready kind=tcp addr=(\S+)/.exec(logText);
      return a && m ? { admin: a[1], mqtt: m[1] } : null;
    },
    30_000,
  );
  const [mqttHost, mqttPort] = splitHostPort(addrs.mqtt);
  return {
    dir,
    base: `http://${addrs.admin}`,
    mqttHost,
    mqttPort,
    child,
    log: () => logText,
    async stop() {
      if (!exited) {
        child.kill("SIGTERM");
        await eventually("tern to stop", () => exited, 10_000).catch(() => child.kill("SIGKILL"));
      }
      writeFileSync(path.join(OUT, "tern.log"), logText);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function splitHostPort(s) {
  const i = s.lastIndexOf(":");
  return [s.slice(0, i).replace(/^\[|\]$/g, ""), Number(s.slice(i + 1))];
}

/** The words of a shell command line, as a POSIX shell splits them (no expansion of $ etc.: the UI quotes). */
function shellWords(cmd) {
  const r = spawnSync("sh", ["-c", `set -- ${cmd}; for a; do printf '%s\\0' "$a"; done`], { encoding: "utf8" });
  assert(r.status === 0, `sh could not parse: ${cmd}: ${r.stderr}`);
  return r.stdout.split("\0").slice(0, -1);
}

function flag(words, f) {
  const i = words.indexOf(f);
  return i >= 0 ? words[i + 1] : undefined;
}

/** A device connection that stays open (`mosquitto_pub -l`: one message per stdin line). */
function connectDevice(broker, creds, topic) {
  const args = ["-l", "-h", broker.mqttHost, "-p", String(broker.mqttPort), "-i", creds.clientId, "-u", creds.username, "-P", creds.password];
  args.push("-t", topic, "-r", "-q", "1", "-V", "5", "-d");
  // Line-buffered, so its -d lines (CONNACK, DISCONNECT) arrive as they happen.
  const p = spawn("stdbuf", ["-oL", "mosquitto_pub", ...args], { stdio: ["pipe", "pipe", "pipe"] });
  const dev = { out: "", exit: null, proc: p };
  p.stdout.on("data", (b) => (dev.out += b));
  p.stderr.on("data", (b) => (dev.out += b));
  p.on("exit", (code) => (dev.exit = code));
  dev.publish = (line) => p.stdin.write(line + "\n");
  dev.close = () => {
    if (dev.exit === null) p.kill("SIGTERM");
  };
  return dev;
}

/** A call to the admin API as a program would make it (setup outside the browser). */
async function apiCall(base, token, method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: { Accept: "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}), ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert(res.ok, `${method} ${p}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** Provisions DASHBOARD with a rule to subscribe to devices/# and connects it (mosquitto_sub, persistent session). */
async function startDashboard(broker) {
  const { access_token: token } = await apiCall(broker.base, null, "POST", "/api/v1/auth/login", { username: USERS.admin.username, password: USERS.admin.password });
  const created = await apiCall(broker.base, token, "POST", "/api/v1/devices", {
    client_id: DASHBOARD.clientId,
    username: DASHBOARD.username,
    generate_password: true,
    labels: { role: "dashboard" },
  });
  await apiCall(broker.base, token, "POST", "/api/v1/acl/rules", { permission: "allow", action: "subscribe", topic: "devices/#", client_id: DASHBOARD.clientId });
  const args = ["-h", broker.mqttHost, "-p", String(broker.mqttPort), "-i", DASHBOARD.clientId, "-u", DASHBOARD.username, "-P", created.password];
  args.push("-t", "devices/#", "-q", "1", "-V", "5", "-c", "-x", "3600", "-v");
  const p = spawn("mosquitto_sub", args, { stdio: ["ignore", "pipe", "pipe"] });
  const sub = { out: "", exit: null };
  p.stdout.on("data", (b) => (sub.out += b));
  p.stderr.on("data", (b) => (sub.out += b));
  p.on("exit", (code) => (sub.exit = code));
  sub.close = () => {
    if (sub.exit === null) p.kill("SIGTERM");
  };
  return sub;
}

/** The value of an overview stat tile. */
async function statValue(page, label) {
  const tile = page.locator(".stat").filter({ has: page.locator(".stat-label", { hasText: label }) });
  return (await tile.locator(".stat-value").first().innerText()).trim();
}

/** One mosquitto_pub run with these credentials: its exit code and output. */
function mosquittoPubOnce(broker, creds, topic, message) {
  const r = spawnSync(
    "mosquitto_pub",
    ["-h", broker.mqttHost, "-p", String(broker.mqttPort), "-i", creds.clientId, "-u", creds.username, "-P", creds.password, "-t", topic, "-m", message, "-V", "5"],
    { encoding: "utf8", timeout: 10_000 },
  );
  return { code: r.status, out: (r.stdout || "") + (r.stderr || "") };
}

// ---------------------------------------------------------------------------------------------
// UI helpers (accessible names: what a screen reader announces)
// ---------------------------------------------------------------------------------------------

async function goto(page, base, hash) {
  await page.goto(`${base}/#${hash}`);
}

/** Navigates with the main navigation, as a user would. */
async function nav(page, label) {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: label, exact: true }).click();
  await heading(page, label === "Audit log" ? /Audit/ : label);
}

async function heading(page, name) {
  return visible(page.getByRole("heading", { level: 1, name }), `page heading ${name}`);
}

async function login(page, base, user) {
  await goto(page, base, "/");
  await visible(page.getByLabel("User name"), "the login form");
  await page.getByLabel("User name").fill(user.username);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await heading(page, "Overview");
}

async function logout(page) {
  await page.getByRole("button", { name: "Log out" }).click();
  await visible(page.getByRole("button", { name: "Sign in" }), "the login form after logging out");
}

/** A table row holding `text`. */
function row(page, text) {
  return page.getByRole("row").filter({ hasText: text });
}

/** Names of the visible buttons and links that change something (what a viewer must not see). */
async function writeControls(page) {
  const WRITE = /\b(new|add|create|delete|remove|kick|publish|disable|enable|rotate|save|edit|revoke|reset|clear retained|disconnect)\b/i;
  const names = [];
  for (const role of ["button", "link"]) {
    for (const el of await page.getByRole(role).all()) {
      if (!(await el.isVisible())) continue;
      const name = ((await el.getAttribute("aria-label")) || (await el.innerText())).trim();
      if (WRITE.test(name)) names.push(`${role} "${name}"`);
    }
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// measurements
// ---------------------------------------------------------------------------------------------

/** Marks the first moment a stat tile of the overview is in the DOM (performance.now(): ms since navigation start). */
const FIRST_STAT_PROBE = () => {
  const mark = () => {
    if (window.__ternFirstStat === undefined && document.querySelector(".stat .stat-value")) {
      window.__ternFirstStat = performance.now();
      return true;
    }
    return false;
  };
  const start = () => {
    if (mark()) return;
    const mo = new MutationObserver(() => mark() && mo.disconnect());
    mo.observe(document.documentElement, { childList: true, subtree: true });
  };
  if (document.documentElement) start();
  else document.addEventListener("readystatechange", start, { once: true });
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n ? (n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2) : null;
};

/** Loads the overview `LOADS` times (already logged in) and reads when its first stat tile showed. */
async function measureFirstRender(page, base, cold) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.setCacheDisabled", { cacheDisabled: cold });
  const runs = [];
  for (let i = 0; i < LOADS; i++) {
    await page.goto("about:blank");
    await page.goto(`${base}/#/`);
    await visible(page.getByText("Connected clients"), "the overview's first stat tile");
    await eventually("the first-stat mark", () => page.evaluate(() => window.__ternFirstStat !== undefined));
    const r = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const paint = Object.fromEntries(performance.getEntriesByType("paint").map((p) => [p.name, p.startTime]));
      return {
        firstStatMs: window.__ternFirstStat,
        responseEndMs: nav?.responseEnd,
        domContentLoadedMs: nav?.domContentLoadedEventEnd,
        loadMs: nav?.loadEventEnd,
        firstContentfulPaintMs: paint["first-contentful-paint"] ?? null,
        transferBytes: performance.getEntriesByType("resource").reduce((s, e) => s + (e.transferSize || 0), nav?.transferSize || 0),
      };
    });
    runs.push(r);
  }
  await cdp.send("Network.setCacheDisabled", { cacheDisabled: false });
  await cdp.detach();
  const pick = (k) => median(runs.map((r) => r[k]).filter((v) => typeof v === "number"));
  return {
    cache: cold ? "disabled" : "warm",
    loads: LOADS,
    medianFirstStatMs: round1(pick("firstStatMs")),
    medianFirstContentfulPaintMs: round1(pick("firstContentfulPaintMs")),
    medianDomContentLoadedMs: round1(pick("domContentLoadedMs")),
    medianLoadMs: round1(pick("loadMs")),
    runs: runs.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === "number" ? round1(v) : v]))),
  };
}

const round1 = (v) => (v === null || v === undefined ? v : Math.round(v * 10) / 10);

/** The bundle the binary serves (index.html's scripts and styles), raw and gzip -9 sizes. */
async function bundleSize(base) {
  const html = await (await fetch(`${base}/`)).text();
  const refs = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
  assert(refs.length > 0, "index.html names no /assets/*.js or *.css: is the UI built into this binary?");
  const files = [];
  for (const ref of refs) {
    const body = Buffer.from(await (await fetch(base + ref)).arrayBuffer());
    files.push({ file: ref, bytes: body.length, gzipBytes: gzipSync(body, { level: 9 }).length });
  }
  // Everything under dist/assets (lazy chunks too), as built on disk.
  const dist = path.join(WEB, "dist", "assets");
  const onDisk = existsSync(dist) ? readdirSync(dist).filter((f) => /\.(js|css)$/.test(f)) : [];
  const served = new Set(refs.map((r) => r.slice("/assets/".length)));
  const stale = onDisk.length > 0 && [...served].some((f) => !onDisk.includes(f));
  return {
    files,
    totalBytes: files.reduce((s, f) => s + f.bytes, 0),
    totalGzipBytes: files.reduce((s, f) => s + f.gzipBytes, 0),
    note: stale
      ? "the binary serves a different bundle than web-admin/dist: rebuild it (cargo build -p tern-server) after npm run build"
      : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// the scenario
// ---------------------------------------------------------------------------------------------

async function main() {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(SHOTS, { recursive: true });
  assert(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: apt-get install chromium (or set TERN_E2E_CHROMIUM)`);
  const broker = await startTern();
  const base = broker.base;
  log(`tern: admin UI ${base}/, MQTT ${broker.mqttHost}:${broker.mqttPort} (${BIN})`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: !HEADED, slowMo: SLOWMO });
  summary.chromium = browser.version();
  summary.tern = BIN;
  const state = { device: null, creds: null, topic: null };
  let dashboard = null;
  try {
    dashboard = await startDashboard(broker);
    // One browser context (own sessionStorage, so own login) per user.
    const newPage = async (who) => {
      const ctx = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1, colorScheme: "light" });
      await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
      const p = await ctx.newPage();
      p.setDefaultTimeout(TIMEOUT);
      watch(p, who, new URL(base).origin);
      currentPage = p;
      return p;
    };
    let page = await newPage("admin");

    log("admin:");
    await step("the UI is served at / and the login page shows", async () => {
      await goto(page, base, "/");
      await heading(page, /Tern admin/);
      await shot(page, "login");
    });

    await step("the error watch catches console errors, page errors and HTTP errors", async () => {
      // The harness itself: a deliberate one of each must be caught (then forgiven).
      await page.evaluate(() => {
        console.error("e2e self-check");
        setTimeout(() => {
          throw new Error("e2e self-check");
        });
        void fetch("/api/v1/e2e-self-check").catch(() => {});
      });
      const kinds = await eventually("the three deliberate problems", () => {
        const k = new Set(problems.map((p) => p.kind));
        return k.has("console error") && k.has("page error") && k.has("http error") ? k : null;
      });
      problems.splice(0);
      assert(kinds.size >= 3, "not every kind was caught");
    });

    await step(
      "a wrong password is refused with the API's message",
      async () => {
        await page.getByLabel("User name").fill(USERS.admin.username);
        await page.getByLabel("Password").fill("not-the-password");
        await page.getByRole("button", { name: "Sign in" }).click();
        const alert = await visible(page.getByRole("alert"), "an error banner");
        const text = await alert.innerText();
        assert(text.trim().length > 0, "the error banner is empty");
        summary.wrongPasswordMessage = text.trim();
      },
      { allow: [{ status: 401, method: "POST", path: "/api/v1/auth/login" }] },
    );

    await step("admin logs in and sees the overview", async () => {
      await login(page, base, USERS.admin);
      await visible(page.getByText("Connected clients"), "the stat tile Connected clients");
      // Two polls, so rates and sparklines have points.
      await sleep(4500);
      await shot(page, "overview");
    });

    await step("provision a device through the wizard: the credentials are shown once", async () => {
      await nav(page, "Devices");
      await page.getByRole("button", { name: "New device" }).first().click();
      await heading(page, "New device");
      await page.getByLabel("Client id", { exact: true }).fill(DEVICE.clientId);
      await page.getByLabel("User name (optional)").fill(DEVICE.username);
      await page.getByLabel("Labels (optional)").fill(DEVICE.labels.split(/,\s*/).join("\n"));
      await page.getByRole("button", { name: "Create device" }).click();
      await visible(page.getByRole("heading", { name: /credentials of .*, shown once/ }), "step 2 of the wizard");
      const shown = (await (await visible(page.getByRole("group", { name: "Generated password" }), "the generated password")).innerText()).trim();
      // The copy button copies that password.
      await page.getByRole("button", { name: "Copy password" }).click();
      const clip = await page.evaluate(() => navigator.clipboard.readText());
      assert(shown.includes(clip) && clip.length >= 16, `the copied password (${clip.length} chars) is not the one shown`);
      // The examples name this broker's real MQTT port (GET /api/v1/listeners); the host is the
      // page's, 127.0.0.1 here too.
      const title = `mosquitto_pub over TCP (port ${broker.mqttPort})`;
      const pre = await visible(page.getByLabel(title, { exact: true }), `the example "${title}" (the broker's real port)`);
      const cmd = (await pre.innerText()).trim();
      // Its copy button copies the same command.
      await page.getByRole("button", { name: `Copy ${title}` }).click();
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      assert(copied === cmd, `the copied command differs from the one shown:\n${copied}\n${cmd}`);
      await shot(page, "device-wizard");
      summary.shownCommand = cmd.replace(clip, "…");
      const words = shellWords(cmd);
      state.creds = { clientId: flag(words, "-i"), username: flag(words, "-u"), password: flag(words, "-P") };
      state.topic = flag(words, "-t");
      assert(state.creds.clientId === DEVICE.clientId, `the example's client id is ${state.creds.clientId}`);
      assert(state.creds.username === DEVICE.username, `the example's user name is ${state.creds.username}`);
      assert(state.creds.password === clip, "the example's password is not the generated one");
      assert(flag(words, "-h") === broker.mqttHost && flag(words, "-p") === String(broker.mqttPort), `the example does not connect to ${broker.mqttHost}:${broker.mqttPort}`);
      // Run the shown command as it is: the credentials authenticate (the publish itself is
      // dropped: ACLs default to deny and no rule exists yet).
      const r = spawnSync("sh", ["-c", cmd], { encoding: "utf8", timeout: 10_000 });
      assert(r.status === 0, `the shown command failed (exit ${r.status}): ${r.stderr}${r.stdout}`);
      await page.getByRole("button", { name: "Done" }).click();
      await heading(page, `Device ${DEVICE.clientId}`);
    });

    let dev = null;
    await step("the device connects with the shown credentials and is online in Clients", async () => {
      dev = state.dev = connectDevice(broker, state.creds, state.topic);
      await eventually("mosquitto_pub to get CONNACK (0)", () => {
        if (dev.exit !== null) throw new Error(`mosquitto_pub exited ${dev.exit}: ${dev.out}`);
        return /received CONNACK \(0\)/.test(dev.out);
      });
      await nav(page, "Clients");
      const r = await visible(row(page, DEVICE.clientId), `a row for ${DEVICE.clientId} in Clients`);
      await r.getByRole("button", { name: `Details of ${DEVICE.clientId}` }).click();
      const details = page.getByRole("region", { name: `Client ${DEVICE.clientId}` });
      await visible(details.getByText("Online", { exact: true }), "the client's details: Online");
      await visible(details.getByText(/MQTT 5/), "the client's details: MQTT 5");
      await shot(page, "clients");
    });

    await step("the device list shows it online", async () => {
      await nav(page, "Devices");
      const r = await visible(row(page, DEVICE.clientId), "the device's row");
      await eventually("the device's status to read online (the list polls every 5 s)", async () => (await r.getByText("online", { exact: true }).count()) > 0);
      await visible(r.getByText("site=berlin"), "the device's labels");
      await shot(page, "devices");
    });

    await step("the device page shows it online with its live connection", async () => {
      await goto(page, base, `/devices/${encodeURIComponent(DEVICE.clientId)}`);
      await heading(page, `Device ${DEVICE.clientId}`);
      await visible(page.getByRole("region", { name: "Device" }).getByText("online", { exact: true }), "the status badge online");
      await visible(page.getByRole("region", { name: "Live connection" }).getByText("Peer"), "the live connection's facts");
      await visible(page.getByRole("region", { name: "Session and subscriptions" }).getByText("online", { exact: true }), "the session, online");
      await visible(page.getByRole("region", { name: "Recent audit entries" }).getByText("device.add"), "the device's audit entry");
      await shot(page, "device");
    });

    await step("add an ACL rule and the check-access form agrees", async () => {
      await nav(page, "ACLs");
      const check = page.getByRole("region", { name: "Check access" });
      const ask = async () => {
        await check.getByLabel("Client id").fill(DEVICE.clientId);
        await check.getByLabel("User name").fill(DEVICE.username);
        await check.getByLabel("Action").selectOption("publish");
        await check.getByLabel("Topic").fill(state.topic);
        await check.getByRole("button", { name: "Check access" }).click();
      };
      // Before the rule: the default policy (deny) decides.
      await ask();
      await visible(check.getByText("Denied", { exact: true }), "the check result Denied (default policy)");
      // The rule: the device may publish and subscribe under devices/<its client id>/.
      await page.getByRole("button", { name: "Add rule" }).click();
      const dialog = page.getByRole("dialog", { name: "Add rule" });
      await dialog.getByLabel("Applies to").selectOption("device");
      await dialog.getByLabel("Client id").fill(DEVICE.clientId);
      await dialog.getByLabel("Permission").selectOption("allow");
      await dialog.getByLabel("Action").selectOption("all");
      await dialog.getByLabel("Topic filter").fill("devices/%c/#");
      await dialog.getByRole("button", { name: "Create rule" }).click();
      const notice = await visible(page.getByRole("status").filter({ hasText: /Rule #\d+ created/ }), "the notice Rule #N created");
      const id = Number(/Rule #(\d+) created/.exec(await notice.innerText())[1]);
      state.ruleId = id;
      await visible(row(page, "devices/%c/#").filter({ hasText: `#${id}` }), "the new rule in the list");
      // After: allowed, and the form names the new rule.
      await ask();
      await visible(check.getByText("Allowed", { exact: true }), "the check result Allowed");
      await visible(check.getByRole("button", { name: `Show rule #${id} in the list` }), `the deciding rule #${id}`);
      await visible(row(page, `#${id}`).getByText("Decided the check"), "the rule marked as the one that decided");
      await shot(page, "acl");
    });

    await step("the device publishes (retained) and the live view shows the message", async () => {
      await nav(page, "Topics");
      await page.getByRole("tab", { name: "Live" }).click();
      const live = page.getByRole("tabpanel", { name: "Live" });
      await live.getByLabel("Topic filter").fill("devices/#");
      await live.getByRole("button", { name: "Start" }).click();
      await visible(live.getByText(/^Live: watching devices\/#/), "the live view to be watching");
      dev.publish(PAYLOAD);
      const list = live.getByRole("list", { name: "Messages, newest first" });
      const msg = await visible(list.getByRole("listitem").filter({ hasText: state.topic }), "the device's message in the live view");
      await msg.locator("summary").click();
      const body = await visible(msg.getByLabel(`Payload of the message on ${state.topic}`), "the message's payload");
      assert((await body.innerText()).includes("21.5"), "the live payload is not the one published");
      await shot(page, "topics-live");
    });

    await step("the topic tree counts the device's messages", async () => {
      await page.getByRole("tab", { name: "Topic tree" }).click();
      const tree = page.getByRole("tabpanel", { name: "Topic tree" });
      await visible(tree.getByRole("table", { name: "Topic tree" }), "the topic tree");
      await tree.getByRole("button", { name: "Expand all" }).click();
      await tree.getByRole("button", { name: state.topic, exact: true }).click();
      const details = page.getByRole("complementary", { name: state.topic });
      await visible(details.getByText("Messages", { exact: true }), "the topic's details");
      await shot(page, "topics");
    });

    await step("the retained viewer shows the payload as JSON", async () => {
      await page.getByRole("tab", { name: "Retained" }).click();
      const panel = page.getByRole("tabpanel", { name: "Retained" });
      await (await visible(panel.getByRole("button", { name: state.topic, exact: true }), "the retained message in the list")).click();
      const body = await visible(panel.getByLabel(`Payload of the retained message on ${state.topic}`), "the retained payload");
      await eventually("the payload pretty-printed as JSON", async () => (await body.innerText()).includes('"temp": 21.5'));
      await shot(page, "retained");
    });

    await step("publish a test message from the UI", async () => {
      await page.getByRole("tab", { name: "Publish" }).click();
      const form = page.getByRole("form", { name: "Publish a message" });
      await form.getByLabel("Topic", { exact: true }).fill(`devices/${DEVICE.clientId}/cmd`);
      await form.getByLabel("QoS").selectOption("1");
      await form.getByLabel("JSON").check();
      await form.getByLabel("Payload", { exact: true }).fill('{"cmd":"reboot"}');
      // MQTT 5 properties.
      await form.getByLabel("Content type").fill("application/json");
      const addProp = form.getByRole("button", { name: "Add user property" });
      const withProps = (await addProp.count()) > 0;
      if (withProps) {
        await addProp.click();
        await form.getByLabel("User property 1 name").fill("source");
        await form.getByLabel("User property 1 value").fill("tern-e2e");
      }
      await form.getByRole("button", { name: "Publish", exact: true }).click();
      await visible(form.getByRole("status").filter({ hasText: /Published to/ }), "the publish result");
      await shot(page, "publish");
      // The live view (still running in its tab) got it too.
      await page.getByRole("tab", { name: "Live" }).click();
      const live = page.getByRole("tabpanel", { name: "Live" });
      const msg = await visible(live.getByRole("listitem").filter({ hasText: `devices/${DEVICE.clientId}/cmd` }), "the UI's message in the live view");
      await msg.locator("summary").click();
      await visible(msg.getByText("application/json"), "its content type in the live view");
      if (withProps) await visible(msg.getByText("tern-e2e"), "its user property in the live view");
    });

    await step("the overview updates live", async () => {
      await nav(page, "Overview");
      for (let i = 0; i < 16; i++) {
        dev.publish(JSON.stringify({ temp: 21 + (i % 5) / 10, unit: "C" }));
        await sleep(400);
      }
      await eventually("Connected clients to read 2", async () => (await statValue(page, "Connected clients")) === "2");
      await shot(page, "overview");
    });

    await step("sessions list", async () => {
      await nav(page, "Sessions");
      await visible(row(page, DEVICE.clientId), "the device's session");
      const r = await visible(row(page, DASHBOARD.clientId), "the dashboard's persistent session");
      await r.getByRole("button", { name: `Details of ${DASHBOARD.clientId}` }).click();
      await visible(page.getByRole("cell", { name: "devices/#" }), "the dashboard's subscription in its details");
      await shot(page, "sessions");
    });

    await step("kick the client: it is disconnected and leaves the list", async () => {
      await nav(page, "Clients");
      const r = await visible(row(page, DEVICE.clientId), "the device's row");
      await r.getByRole("button", { name: `Kick ${DEVICE.clientId}` }).click();
      await page.getByRole("dialog", { name: `Kick ${DEVICE.clientId}?` }).getByRole("button", { name: "Kick" }).click();
      await visible(page.getByRole("status").filter({ hasText: `Kicked ${DEVICE.clientId}` }), "the notice Kicked");
      // mosquitto_pub -l notices the DISCONNECT at once but exits only at its next line.
      await eventually("the device to get DISCONNECT 0x98 (Administrative action)", () => /Received DISCONNECT \(152\)/.test(dev.out));
      dev.close();
      await eventually("the row to leave the Clients list", async () => (await row(page, DEVICE.clientId).count()) === 0);
    });

    await step("disable the device: its reconnect is refused", async () => {
      await goto(page, base, `/devices/${encodeURIComponent(DEVICE.clientId)}`);
      await heading(page, `Device ${DEVICE.clientId}`);
      await page.getByRole("button", { name: "Disable", exact: true }).click();
      await visible(page.getByRole("button", { name: "Enable", exact: true }), "the Enable button");
      await visible(page.getByRole("region", { name: "Device" }).getByText("disabled", { exact: true }), "the status disabled");
      const r = mosquittoPubOnce(broker, state.creds, state.topic, "x");
      assert(r.code !== 0 && /not authori[sz]ed/i.test(r.out), `the disabled device connected: exit ${r.code}: ${r.out}`);
      // PATCH {enabled: false} is audited as device.update (device.disable is the CLI's).
      await visible(page.getByRole("region", { name: "Recent audit entries" }).getByText(/^device\.(update|disable)$/), "the audit entry of the change");
    });

    await step("set the device's own limits: checked in the form, then shown on its page", async () => {
      // Still on the device page (the step before). None set yet.
      const limits = page.getByRole("region", { name: "Limits", exact: true });
      await visible(limits.getByText(/defaults apply/), "the note that no limit is set");
      await visible(limits.getByText(/apply at the device's next connection/), "the note that changes apply at the next connection");
      await limits.getByRole("button", { name: "Edit limits" }).click();
      const form = limits.getByRole("form", { name: "Edit limits" });
      // A value the API would refuse is caught in the form, without a request.
      await form.getByLabel("Max queued bytes", { exact: true }).fill("10");
      await form.getByRole("button", { name: "Save limits" }).click();
      await visible(form.getByText("At least 1024 (empty: not set)."), "the field's error");
      await form.getByLabel("Max queued bytes", { exact: true }).fill("");
      await form.getByLabel("Publish rate (msg/s)", { exact: true }).fill("10");
      await form.getByLabel("Max retained messages", { exact: true }).fill("5");
      await form.getByRole("button", { name: "Save limits" }).click();
      await visible(limits.getByRole("status").filter({ hasText: "Limits saved" }), "the notice Limits saved");
      // Stored: a reload shows them (the list of set limits, with units).
      await page.reload();
      await heading(page, `Device ${DEVICE.clientId}`);
      await visible(limits.getByText("10 msg/s", { exact: true }), "the publish rate, 10 msg/s");
      await visible(limits.getByText("5 messages", { exact: true }), "the retained-message limit, 5 messages");
      assert((await limits.getByRole("term").count()) === 2, "other limits are shown as set");
    });

    await step("admin users: an API key is shown once and works", async () => {
      await nav(page, "Admin users");
      await visible(row(page, USERS.viewer.username), "the viewer in the list");
      await page.getByRole("button", { name: "Create API key" }).click();
      const dialog = page.getByRole("dialog", { name: "Create API key" });
      await dialog.getByLabel("Name").fill("e2e automation");
      await selectIf(dialog, "Role", "viewer");
      await dialog.getByRole("button", { name: "Create key" }).click();
      const secret = await visible(page.locator("[data-secret]"), "the new API key");
      const key = (await secret.innerText()).trim();
      assert(/^tern_/.test(key), `the key does not look like an API key: ${key.slice(0, 8)}…`);
      const res = await fetch(`${base}/api/v1/auth/me`, { headers: { Authorization: `Bearer ${key}` } });
      assert(res.ok, `GET /api/v1/auth/me with the shown key: ${res.status}`);
      await shot(page, "admin-users");
      await page.getByRole("button", { name: "Done" }).click();
    });

    await step("the audit log names the changes", async () => {
      await nav(page, "Audit log");
      for (const action of ["device.add", "acl.add", "client.kick", "device.update", "apikey.add"]) {
        await visible(page.getByRole("cell", { name: new RegExp(`^${action.replace(".", "\\.")}`) }), `an audit entry ${action}`);
      }
      await shot(page, "audit");
    });

    await step("the Cluster page says a single node is not clustered", async () => {
      await nav(page, "Cluster");
      await visible(page.getByText("This broker is not clustered."), "the single-node notice");
      await visible(page.getByText("docs/clustering.md"), "the pointer to docs/clustering.md");
      assert((await page.getByRole("table").count()) === 0, "a node table on a single node");
      await shot(page, "cluster");
    });

    await step("log out", async () => {
      await logout(page);
      assert(!(await page.getByText(/session ended/i).count()), "logging out says the session ended");
    });
    if (dev) dev.close();

    await page.context().close();

    skipRest = false;
    log("operator:");
    page = await newPage("operator");
    await step("an operator sees no admin-user page", async () => {
      await login(page, base, USERS.operator);
      const links = page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Admin users" });
      assert((await links.count()) === 0, "the operator's navigation has Admin users");
      await goto(page, base, "/admin");
      await visible(page.getByText(/for admins/i), "the admins-only notice");
      await logout(page);
    });

    await page.context().close();

    skipRest = false;
    log("viewer:");
    page = await newPage("viewer");
    await page.addInitScript(FIRST_STAT_PROBE);
    await step("a viewer logs in", async () => login(page, base, USERS.viewer));
    for (const [label, hash, h] of [
      ["Devices", "/devices", "Devices"],
      ["the device page", `/devices/${encodeURIComponent(DEVICE.clientId)}`, `Device ${DEVICE.clientId}`],
      ["ACLs", "/acl", "ACLs"],
      ["Clients", "/clients", "Clients"],
      ["Sessions", "/sessions", "Sessions"],
      ["Topics", "/topics", "Topics"],
      ["Cluster", "/cluster", "Cluster"],
      ["Audit log", "/audit", "Audit log"],
    ]) {
      await step(
        `a viewer sees no write controls on ${label}`,
        async () => {
          await goto(page, base, hash);
          await heading(page, h);
          await sleep(800); // lists load
          if (hash === "/topics") {
            for (const t of await page.getByRole("tab").all()) {
              await t.click();
              await sleep(400);
              const w = await writeControls(page);
              assert(w.length === 0, `write controls on the ${(await t.innerText()).trim()} tab: ${w.join(", ")}`);
            }
          }
          const w = await writeControls(page);
          assert(w.length === 0, `write controls: ${w.join(", ")}`);
          if (hash === "/devices") await shot(page, "viewer-devices");
        },
        { critical: false },
      );
    }

    await step(
      "an expired access token is refreshed without a new login",
      async () => {
        await goto(page, base, "/devices");
        await heading(page, "Devices");
        await page.evaluate(() => {
          const t = JSON.parse(sessionStorage.getItem("tern.session"));
          t.access = "expired." + t.access.slice(8);
          sessionStorage.setItem("tern.session", JSON.stringify(t));
        });
        await page.reload();
        await heading(page, "Devices");
        await visible(row(page, DEVICE.clientId), "the device list after the refresh");
      },
      { allow: [{ status: 401, method: "GET", path: "/api/v1/devices" }] },
    );
    await step(
      "a revoked session returns to the login page and says so",
      async () => {
        await page.evaluate(() => {
          const t = JSON.parse(sessionStorage.getItem("tern.session"));
          t.access = "revoked";
          t.refresh = "revoked";
          sessionStorage.setItem("tern.session", JSON.stringify(t));
        });
        await page.reload();
        await visible(page.getByText("Your session ended. Sign in again."), "the notice that the session ended");
        await login(page, base, USERS.viewer);
      },
      // Every poll of the page answers 401 once, and so does the refresh.
      { allow: [{ status: 401, method: "GET", prefix: "/api/v1/" }, { status: 401, method: "POST", path: "/api/v1/auth/refresh" }] },
    );

    skipRest = false;
    log("measurements:");
    await step("time to first render of the overview (cold and warm cache)", async () => {
      summary.firstRender = {
        cold: await measureFirstRender(page, base, true),
        warm: await measureFirstRender(page, base, false),
      };
      const c = summary.firstRender.cold;
      const w = summary.firstRender.warm;
      log(`    first stat tile visible: median ${c.medianFirstStatMs} ms (cache disabled), ${w.medianFirstStatMs} ms (warm), over ${LOADS} loads`);
      log(`    first contentful paint: median ${c.medianFirstContentfulPaintMs} ms (cache disabled)`);
    });
    await step("bundle size", async () => {
      summary.bundle = await bundleSize(base);
      const b = summary.bundle;
      for (const f of b.files) log(`    ${f.file}: ${kib(f.bytes)} (${kib(f.gzipBytes)} gzip)`);
      log(`    total: ${kib(b.totalBytes)} (${kib(b.totalGzipBytes)} gzip)`);
      assert(!b.note, b.note);
    });
    await page.context().close();
  } finally {
    dashboard?.close();
    state.dev?.close();
    await browser.close().catch(() => {});
    await broker.stop();
  }
}

async function selectIf(scope, label, value) {
  const el = scope.getByLabel(label);
  if (!(await el.count())) return;
  const first = el.first();
  const tag = await first.evaluate((e) => e.tagName.toLowerCase());
  if (tag === "select") await first.selectOption(value);
  else if (tag === "input" && (await first.getAttribute("type")) !== "radio") await first.fill(value);
}

const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;

let crashed = null;
try {
  await main();
} catch (e) {
  crashed = e;
  console.error(`e2e: ${e?.stack || e}`);
  results.push({ name: "harness", status: "failed", ms: 0, error: String(e?.stack || e) });
}
if (UPDATE_DOC_SHOTS && existsSync(SHOTS)) {
  mkdirSync(DOC_SHOTS, { recursive: true });
  for (const f of readdirSync(SHOTS)) copyFileSync(path.join(SHOTS, f), path.join(DOC_SHOTS, f));
  log(`screenshots copied to ${path.relative(ROOT, DOC_SHOTS)}/`);
}
const count = (s) => results.filter((r) => r.status === s).length;
summary.passed = count("passed");
summary.failed = count("failed");
summary.skipped = count("skipped");
summary.abortedRequests = abortedRequests;
summary.finishedAt = new Date().toISOString();
mkdirSync(OUT, { recursive: true });
writeFileSync(path.join(OUT, "summary.json"), JSON.stringify(summary, null, 2) + "\n");
log(`summary: ${path.relative(ROOT, path.join(OUT, "summary.json"))}, screenshots: ${path.relative(ROOT, SHOTS)}/`);
// The closing line scripts/test.sh counts.
log(`e2e: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped`);
process.exit(summary.failed > 0 || crashed ? 1 : 0);
