// Audit log: newest first, paged, filtered by actor, action prefix, target and time range (the
// API's filters); each entry expands to its changes and its detail JSON (before/after).
// `#/audit?target=device:X` (also `actor`, `action`) prefills the filters.

import { Fragment } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, type AuditItem, type AuditPage } from "../api/client";
import { useAuth } from "../auth";
import { Empty, ErrorBanner, Field, Loading, Page, Pager, useCursor } from "../components";
import { useAsync, useLocation } from "../hooks";
import { changes, localToMillis, short, targetRoute } from "../lib/audit";
import { ago, when } from "../lib/format";
import { href } from "../lib/router";
import { FieldError } from "./clients/shared";

const PAGE = 50;

/** Action prefixes the broker writes (the filter matches any prefix). */
const ACTIONS = [
  "device.",
  "device.add",
  "device.update",
  "device.enable",
  "device.disable",
  "device.rotate",
  "device.remove",
  "acl.",
  "acl.add",
  "acl.update",
  "acl.remove",
  "client.kick",
  "session.delete",
  "retained.delete",
  "admin.",
  "apikey.",
];

interface Filters {
  actor: string;
  action: string;
  target: string;
  since: string;
  until: string;
}

export function Audit() {
  const auth = useAuth();
  return (
    <Page title="Audit log">
      {auth.canOperate ? <AuditLog /> : <Empty>The audit log is for operators and admins.</Empty>}
    </Page>
  );
}

function fromQuery(q: URLSearchParams): Filters {
  return { actor: q.get("actor") ?? "", action: q.get("action") ?? "", target: q.get("target") ?? "", since: "", until: "" };
}

function AuditLog() {
  const loc = useLocation();
  const qs = loc.query.toString();
  const [form, setForm] = useState<Filters>(() => fromQuery(loc.query));
  const [applied, setApplied] = useState<Filters>(form);
  const [timeError, setTimeError] = useState<string | undefined>(undefined);
  const [open, setOpen] = useState<Set<number>>(new Set());
  const cursor = useCursor();

  useEffect(() => {
    const f = fromQuery(new URLSearchParams(qs));
    if (f.actor || f.action || f.target) {
      setForm(f);
      setApplied(f);
      cursor.reset();
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [qs]);

  const since = localToMillis(applied.since);
  const until = localToMillis(applied.until);
  const page = useAsync(
    () =>
      api.get<AuditPage>("/api/v1/audit", {
        actor: applied.actor.trim(),
        action: applied.action.trim(),
        target: applied.target.trim(),
        since,
        until,
        before: cursor.after,
        limit: PAGE,
      }),
    [applied, cursor.after],
  );

  const set = (k: keyof Filters, v: string) => setForm((f) => ({ ...f, [k]: v }));
  const apply = (e: Event) => {
    e.preventDefault();
    const s = localToMillis(form.since);
    const u = localToMillis(form.until);
    const bad = s !== undefined && u !== undefined && u <= s ? "“Until” must be after “Since”." : undefined;
    setTimeError(bad);
    if (bad) return;
    setApplied({ ...form });
    setOpen(new Set());
    cursor.reset();
  };
  const clear = () => {
    const empty = { actor: "", action: "", target: "", since: "", until: "" };
    setForm(empty);
    setApplied(empty);
    setTimeError(undefined);
    setOpen(new Set());
    cursor.reset();
  };
  const toggle = (id: number) =>
    setOpen((s) => {
      const n = new Set(s);
      if (n.has(id)) n.delete(id);
      else n.add(id);
      return n;
    });

  const items = page.data?.items ?? [];
  const filtered = Object.values(applied).some((v) => v.trim() !== "");
  return (
    <>
      <form class="card" onSubmit={apply} aria-label="Filter the audit log" role="search">
        <div class="row">
          <Field label="Actor" id="audit-actor" hint="Name, key:<id> or cli">
            <input id="audit-actor" value={form.actor} onInput={(e) => set("actor", e.currentTarget.value)} autocomplete="off" aria-describedby="audit-actor-hint" />
          </Field>
          <Field label="Action" id="audit-action" hint="Prefix, e.g. device.">
            <input
              id="audit-action"
              list="audit-actions"
              value={form.action}
              onInput={(e) => set("action", e.currentTarget.value)}
              autocomplete="off"
              aria-describedby="audit-action-hint"
            />
            <datalist id="audit-actions">
              {ACTIONS.map((a) => (
                <option key={a} value={a} />
              ))}
            </datalist>
          </Field>
          <Field label="Target" id="audit-target" hint="e.g. device:<client id>">
            <input id="audit-target" value={form.target} onInput={(e) => set("target", e.currentTarget.value)} autocomplete="off" aria-describedby="audit-target-hint" />
          </Field>
          <Field label="Since" id="audit-since">
            <input id="audit-since" type="datetime-local" value={form.since} onInput={(e) => set("since", e.currentTarget.value)} />
          </Field>
          <Field label="Until" id="audit-until">
            <input
              id="audit-until"
              type="datetime-local"
              value={form.until}
              onInput={(e) => set("until", e.currentTarget.value)}
              aria-invalid={timeError ? "true" : undefined}
              aria-describedby={timeError ? "audit-until-err" : undefined}
            />
            <FieldError id="audit-until-err" error={timeError} />
          </Field>
          <div class="row-actions">
            <button type="submit" class="primary">
              Apply filters
            </button>
            <button type="button" onClick={clear}>
              Clear filters
            </button>
          </div>
        </div>
      </form>
      <ErrorBanner error={page.error} />
      {page.loading && !page.data ? (
        <Loading label="Loading the audit log…" />
      ) : !page.data ? null : items.length === 0 ? (
        <Empty>{filtered ? "No entry matches these filters." : cursor.hasPrev ? "No older entries." : "The audit log is empty."}</Empty>
      ) : (
        <div class="table-wrap">
          <table class="audit-table">
            <caption class="vh">Audit log entries, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Time</th>
                <th scope="col">Actor</th>
                <th scope="col">Action</th>
                <th scope="col">Target</th>
                <th scope="col">Source</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {items.map((e) => (
                <Fragment key={e.id}>
                  <tr class={open.has(e.id) ? "selected" : undefined}>
                    <td title={ago(e.at)}>{when(e.at)}</td>
                    <td>{e.actor}</td>
                    <td>
                      <code>{e.action}</code>
                    </td>
                    <td>
                      <Target target={e.target} />
                    </td>
                    <td class="mono">{e.source ?? <span class="muted">command line</span>}</td>
                    <td>
                      <button
                        type="button"
                        class="small"
                        aria-expanded={open.has(e.id)}
                        aria-controls={`audit-detail-${e.id}`}
                        aria-label={`${open.has(e.id) ? "Hide" : "Show"} details of entry ${e.id}`}
                        onClick={() => toggle(e.id)}
                      >
                        {open.has(e.id) ? "Hide details" : "Show details"}
                      </button>
                    </td>
                  </tr>
                  {open.has(e.id) && (
                    <tr class="audit-detail" id={`audit-detail-${e.id}`}>
                      <td colSpan={6}>
                        <Detail entry={e} />
                      </td>
                    </tr>
                  )}
                </Fragment>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager
        hasPrev={cursor.hasPrev}
        next={page.data?.next == null ? null : String(page.data.next)}
        onPrev={() => (setOpen(new Set()), cursor.prev())}
        onNext={(c) => (setOpen(new Set()), cursor.next(c))}
      />
    </>
  );
}

function Target(props: { target: string | null | undefined }) {
  if (!props.target) return <span class="muted">–</span>;
  const r = targetRoute(props.target);
  return r ? (
    <a href={href(r.parts, r.query)}>
      <code>{props.target}</code>
    </a>
  ) : (
    <code>{props.target}</code>
  );
}

function Detail(props: { entry: AuditItem }) {
  const e = props.entry;
  const diff = changes(e.detail);
  const hasDetail = e.detail && Object.keys(e.detail).length > 0;
  return (
    <div class="audit-detail-body">
      <p class="small muted">
        Entry #{e.id} · {when(e.at)} ({ago(e.at)})
      </p>
      {diff.length > 0 && (
        <>
          <h3 class="small-title">Changed</h3>
          <ul class="changes">
            {diff.map((c) => (
              <li key={c.field}>
                <code>{c.field}</code>: <code>{short(c.before)}</code> → <code>{short(c.after)}</code>
              </li>
            ))}
          </ul>
        </>
      )}
      {hasDetail ? (
        <pre aria-label={`Detail of entry ${e.id} (JSON)`} tabIndex={0}>
          {JSON.stringify(e.detail, null, 2)}
        </pre>
      ) : (
        <p class="muted">No further detail.</p>
      )}
    </div>
  );
}
