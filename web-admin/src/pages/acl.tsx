// ACLs: the rules grouped per device (client id), per user name and global, with a filter,
// add/edit/delete for operators, and the "Check access" form that names the rule that decided.
// `#/acl?client_id=X` (the device page links there) prefills the check form and the filter;
// `#/acl?rule=N` (the audit log links there) highlights rule N.

import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { api, type AclCheckRequest, type AclCheckResult, type AclRule, type DevicePage, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { Badge, Confirm, Empty, ErrorBanner, Field, Loading, Notice, Page } from "../components";
import { useAction, useAsync, useLocation } from "../hooks";
import {
  ACTION_LABELS,
  bodyOf,
  checkWords,
  describeRule,
  emptyForm,
  formOf,
  groupRules,
  limitsText,
  ruleMatches,
  subjectText,
  validTopicName,
  validFilter,
  type FormErrors,
  type RuleForm,
  type SubjectKind,
} from "../lib/acl";
import { href } from "../lib/router";
import { FieldError, FormDialog } from "./clients/shared";

type AclRuleList = Schemas["AclRuleList"];

export function Acl() {
  const auth = useAuth();
  const loc = useLocation();
  const qClient = loc.query.get("client_id") ?? "";
  const qUser = loc.query.get("username") ?? "";
  const qRule = loc.query.get("rule");
  const rules = useAsync(() => api.get<AclRuleList>("/api/v1/acl/rules"), []);
  const [filter, setFilter] = useState(qClient || qUser);
  const [highlight, setHighlight] = useState<number | null>(qRule && /^\d+$/.test(qRule) ? Number(qRule) : null);
  const [decided, setDecided] = useState<number | null>(null);
  const [editing, setEditing] = useState<{ rule?: AclRule } | null>(null);
  const [deleting, setDeleting] = useState<AclRule | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const del = useAction();

  // The rule to bring into view once it is on screen; `focus` only when the user asked for it
  // ("Show rule #N"), never after a save (focus stays where the user is typing).
  const scrollTo = useRef<{ id: number; focus: boolean } | null>(highlight === null ? null : { id: highlight, focus: false });
  // A new link to this page (same route, other query) updates the filter and the highlight.
  useEffect(() => {
    setFilter(qClient || qUser);
    if (qRule && /^\d+$/.test(qRule)) {
      setHighlight(Number(qRule));
      scrollTo.current = { id: Number(qRule), focus: false };
    }
  }, [qClient, qUser, qRule]);

  const items = rules.data?.items ?? [];
  const groups = groupRules(items, filter);

  // Scroll the highlighted rule into view once it is on screen.
  const [scrollTick, setScrollTick] = useState(0);
  useEffect(() => {
    const want = scrollTo.current;
    if (want === null || !rules.data) return;
    const row = document.getElementById(`acl-rule-${want.id}`);
    if (row) {
      row.scrollIntoView({ block: "center" });
      if (want.focus) row.focus({ preventScroll: true });
      scrollTo.current = null;
    }
  }, [rules.data, filter, highlight, scrollTick]);

  const showRule = (id: number) => {
    const r = items.find((x) => x.id === id);
    if (!r) return;
    // Clear a filter that hides it.
    if (!ruleMatches(r, filter)) setFilter("");
    setHighlight(id);
    scrollTo.current = { id, focus: true };
    setScrollTick((t) => t + 1);
  };

  const confirmDelete = async () => {
    const r = deleting;
    if (!r) return;
    const ok = await del.run(async () => {
      await api.del(`/api/v1/acl/rules/${r.id}`);
      return true;
    });
    setDeleting(null);
    if (ok) setNotice(`Rule #${r.id} deleted.`);
    rules.reload();
  };

  const prefill = { clientId: qClient || undefined, username: !qClient && qUser ? qUser : undefined };

  return (
    <Page
      title="ACLs"
      actions={
        auth.canOperate && (
          <button type="button" class="primary" onClick={() => setEditing({})}>
            Add rule
          </button>
        )
      }
    >
      {notice && (
        <Notice>
          <span>{notice}</span>{" "}
          <button type="button" class="link" onClick={() => setNotice(null)} aria-label="Dismiss notice">
            ×
          </button>
        </Notice>
      )}
      <ErrorBanner error={del.error} onDismiss={del.clear} />
      {qRule && rules.data && !items.some((r) => String(r.id) === qRule) && (
        <Notice>
          <span>Rule #{qRule} does not exist any more: it was deleted.</span>
        </Notice>
      )}

      <CheckAccess
        key={`${qClient}\u0000${qUser}`}
        clientId={qClient}
        username={qUser}
        ruleIds={items.map((r) => r.id)}
        onDecided={(id) => {
          setDecided(id);
          if (id !== null) setHighlight(id);
          // A rule added elsewhere since the list loaded: fetch the list again.
          if (id !== null && !items.some((r) => r.id === id)) rules.reload();
        }}
        onShowRule={showRule}
      />

      <section aria-labelledby="acl-rules-title">
        <h2 id="acl-rules-title">Rules</h2>
        <p class="muted small">
          A matching deny rule overrides every allow rule; when no rule concerns a request, the broker's default policy (
          <code>auth.acl_default</code>) decides. <code>%c</code> and <code>%u</code> in a topic filter stand for the client id and
          user name. Changes apply to live connections at once.
        </p>
        <div class="toolbar">
          <Field label="Filter rules" id="acl-filter" hint="Client id, user name, topic or #id">
            <input id="acl-filter" type="search" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} aria-describedby="acl-filter-hint" />
          </Field>
          {rules.data && (
            <span class="muted small" role="status">
              {filter.trim() ? `${groups.shown} of ${items.length} rules match` : `${items.length} ${items.length === 1 ? "rule" : "rules"}`}
            </span>
          )}
        </div>
        <ErrorBanner error={rules.error} />
        {rules.loading && !rules.data ? (
          <Loading label="Loading rules…" />
        ) : !rules.data ? null : items.length === 0 ? (
          <Empty>
            No ACL rules yet: the default policy decides every request.
            {auth.canOperate && " Use “Add rule” to create one."}
          </Empty>
        ) : (
          <>
            <h3 class="group-title">Per device</h3>
            {groups.devices.length === 0 ? (
              <p class="muted">No per-device rules{filter.trim() ? " match the filter" : ""}.</p>
            ) : (
              groups.devices.map(([cid, rs]) => (
                <RuleTable
                  key={`c:${cid}`}
                  caption={
                    <>
                      Client id <a href={href(["devices", cid])}>{cid}</a>
                    </>
                  }
                  rules={rs}
                  highlight={highlight}
                  decided={decided}
                  canOperate={auth.canOperate}
                  onEdit={(r) => setEditing({ rule: r })}
                  onDelete={setDeleting}
                />
              ))
            )}
            <h3 class="group-title">Per user name</h3>
            {groups.users.length === 0 ? (
              <p class="muted">No per-user-name rules{filter.trim() ? " match the filter" : ""}.</p>
            ) : (
              groups.users.map(([user, rs]) => (
                <RuleTable
                  key={`u:${user}`}
                  caption={<>User name {user}</>}
                  rules={rs}
                  highlight={highlight}
                  decided={decided}
                  canOperate={auth.canOperate}
                  onEdit={(r) => setEditing({ rule: r })}
                  onDelete={setDeleting}
                />
              ))
            )}
            <h3 class="group-title">Global</h3>
            {groups.global.length === 0 ? (
              <p class="muted">No global rules{filter.trim() ? " match the filter" : ""}.</p>
            ) : (
              <RuleTable
                caption={<>Everyone</>}
                rules={groups.global}
                highlight={highlight}
                decided={decided}
                canOperate={auth.canOperate}
                onEdit={(r) => setEditing({ rule: r })}
                onDelete={setDeleting}
              />
            )}
          </>
        )}
      </section>

      {editing && (
        <RuleEditor
          rule={editing.rule}
          prefill={prefill}
          onCancel={() => setEditing(null)}
          onSaved={(r, created) => {
            setEditing(null);
            setNotice(created ? `Rule #${r.id} created: ${describeRule(r)}.` : `Rule #${r.id} saved: ${describeRule(r)}.`);
            setHighlight(r.id);
            scrollTo.current = { id: r.id, focus: false };
            rules.reload();
          }}
        />
      )}
      {deleting && (
        <Confirm
          title={`Delete rule #${deleting.id}?`}
          confirmLabel="Delete rule"
          danger
          busy={del.busy}
          onCancel={() => setDeleting(null)}
          onConfirm={confirmDelete}
        >
          <p>
            <code>{describeRule(deleting)}</code>
          </p>
          <p>The change applies to live connections at once.</p>
        </Confirm>
      )}
    </Page>
  );
}

function RuleTable(props: {
  caption: ComponentChildren;
  rules: AclRule[];
  highlight: number | null;
  decided: number | null;
  canOperate: boolean;
  onEdit: (r: AclRule) => void;
  onDelete: (r: AclRule) => void;
}) {
  return (
    <div class="table-wrap">
      <table class="acl-table">
        <caption>{props.caption}</caption>
        <thead>
          <tr>
            <th scope="col">Rule</th>
            <th scope="col">Permission</th>
            <th scope="col">Action</th>
            <th scope="col">Topic filter</th>
            <th scope="col">Applies to</th>
            <th scope="col">Limits</th>
            {props.canOperate && (
              <th scope="col">
                <span class="vh">Actions</span>
              </th>
            )}
          </tr>
        </thead>
        <tbody>
          {props.rules.map((r) => (
            <tr key={r.id} id={`acl-rule-${r.id}`} tabIndex={-1} class={r.id === props.highlight ? "hl" : undefined} aria-current={r.id === props.highlight ? "true" : undefined}>
              <td>
                #{r.id}
                {r.id === props.decided && (
                  <>
                    {" "}
                    <Badge kind="warn">Decided the check</Badge>
                  </>
                )}
              </td>
              <td>{r.permission === "allow" ? <Badge kind="ok">Allow</Badge> : <Badge kind="bad">Deny</Badge>}</td>
              <td>{ACTION_LABELS[r.action]}</td>
              <td>
                <code>{r.topic}</code>
              </td>
              <td>{subjectText(r)}</td>
              <td>{limitsText(r) || <span class="muted">–</span>}</td>
              {props.canOperate && (
                <td class="row-actions">
                  <button type="button" class="small" onClick={() => props.onEdit(r)} aria-label={`Edit rule #${r.id}`}>
                    Edit
                  </button>
                  <button type="button" class="small" onClick={() => props.onDelete(r)} aria-label={`Delete rule #${r.id}`}>
                    Delete
                  </button>
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

const KIND_LABELS: [SubjectKind, string][] = [
  ["device", "One device (client id)"],
  ["user", "One user name"],
  ["both", "A client id with a user name"],
  ["global", "Everyone (global)"],
];

function RuleEditor(props: {
  rule?: AclRule;
  prefill: { clientId?: string; username?: string };
  onCancel: () => void;
  onSaved: (r: AclRule, created: boolean) => void;
}) {
  const [form, setForm] = useState<RuleForm>(() => (props.rule ? formOf(props.rule) : emptyForm(props.prefill)));
  const [errors, setErrors] = useState<FormErrors>({});
  const save = useAction();
  const set = <K extends keyof RuleForm>(k: K, v: RuleForm[K]) => setForm((f) => ({ ...f, [k]: v }));
  const submit = async () => {
    const b = bodyOf(form);
    if (b.errors) {
      setErrors(b.errors);
      const first = (["clientId", "username", "topic"] as const).find((k) => b.errors[k]);
      if (first) document.getElementById(`rule-${first}`)?.focus();
      return;
    }
    setErrors({});
    const r = props.rule;
    const saved = await save.run(() =>
      r ? api.put<AclRule>(`/api/v1/acl/rules/${r.id}`, b.body) : api.post<AclRule>("/api/v1/acl/rules", b.body),
    );
    if (saved) props.onSaved(saved, !r);
  };
  const allow = form.permission === "allow";
  const needClient = form.kind === "device" || form.kind === "both";
  const needUser = form.kind === "user" || form.kind === "both";
  return (
    <FormDialog
      title={props.rule ? `Edit rule #${props.rule.id}` : "Add rule"}
      submitLabel={props.rule ? "Save rule" : "Create rule"}
      busy={save.busy}
      error={save.error}
      onSubmit={submit}
      onCancel={props.onCancel}
    >
      <Field label="Applies to" id="rule-kind">
        <select id="rule-kind" value={form.kind} onChange={(e) => set("kind", e.currentTarget.value as SubjectKind)}>
          {KIND_LABELS.map(([k, l]) => (
            <option key={k} value={k}>
              {l}
            </option>
          ))}
        </select>
      </Field>
      {needClient && (
        <Field label="Client id" id="rule-clientId">
          <input
            id="rule-clientId"
            value={form.clientId}
            onInput={(e) => set("clientId", e.currentTarget.value)}
            aria-invalid={errors.clientId ? "true" : undefined}
            aria-describedby={errors.clientId ? "rule-clientId-err" : undefined}
            autocomplete="off"
          />
          <FieldError id="rule-clientId-err" error={errors.clientId} />
        </Field>
      )}
      {needUser && (
        <Field label="User name" id="rule-username">
          <input
            id="rule-username"
            value={form.username}
            onInput={(e) => set("username", e.currentTarget.value)}
            aria-invalid={errors.username ? "true" : undefined}
            aria-describedby={errors.username ? "rule-username-err" : undefined}
            autocomplete="off"
          />
          <FieldError id="rule-username-err" error={errors.username} />
        </Field>
      )}
      <div class="row">
        <Field label="Permission" id="rule-permission">
          <select id="rule-permission" value={form.permission} onChange={(e) => set("permission", e.currentTarget.value as RuleForm["permission"])}>
            <option value="allow">Allow</option>
            <option value="deny">Deny</option>
          </select>
        </Field>
        <Field label="Action" id="rule-action">
          <select id="rule-action" value={form.action} onChange={(e) => set("action", e.currentTarget.value as RuleForm["action"])}>
            <option value="publish">Publish</option>
            <option value="subscribe">Subscribe</option>
            <option value="all">Publish and subscribe</option>
          </select>
        </Field>
      </div>
      <Field label="Topic filter" id="rule-topic" hint="Wildcards + and # as whole levels (# last); %c and %u stand for the client id and user name.">
        <input
          id="rule-topic"
          class="mono"
          value={form.topic}
          onInput={(e) => set("topic", e.currentTarget.value)}
          aria-invalid={errors.topic ? "true" : undefined}
          aria-describedby={errors.topic ? "rule-topic-err rule-topic-hint" : "rule-topic-hint"}
          autocomplete="off"
          spellcheck={false}
        />
        <FieldError id="rule-topic-err" error={errors.topic} />
      </Field>
      <fieldset class="plain" disabled={!allow}>
        <legend>Limits {allow ? "(optional)" : "(allow rules only)"}</legend>
        <div class="row">
          <Field label="Highest QoS" id="rule-maxqos">
            <select id="rule-maxqos" value={allow ? form.maxQos : ""} onChange={(e) => set("maxQos", e.currentTarget.value)}>
              <option value="">Any</option>
              <option value="0">0</option>
              <option value="1">1</option>
              <option value="2">2</option>
            </select>
          </Field>
          <label class="check">
            <input type="checkbox" checked={allow && form.noRetain} onChange={(e) => set("noRetain", e.currentTarget.checked)} />
            Refuse retained publishes
          </label>
        </div>
      </fieldset>
    </FormDialog>
  );
}

function CheckAccess(props: {
  clientId: string;
  username: string;
  ruleIds: number[];
  onDecided: (ruleId: number | null) => void;
  onShowRule: (id: number) => void;
}) {
  const [clientId, setClientId] = useState(props.clientId);
  const [username, setUsername] = useState(props.username);
  const [action, setAction] = useState<AclCheckRequest["action"]>("publish");
  const [topic, setTopic] = useState("");
  const [qos, setQos] = useState("0");
  const [retain, setRetain] = useState(false);
  const [topicError, setTopicError] = useState<string | undefined>(undefined);
  const [answer, setAnswer] = useState<{ req: AclCheckRequest; res: AclCheckResult } | null>(null);
  const check = useAction();

  // From a device link: check as the device authenticates (its user name, or its client id
  // when it has none). A search, not GET /devices/{id}, so an unknown id is no failed request.
  useEffect(() => {
    if (!props.clientId || props.username) return;
    let alive = true;
    api
      .get<DevicePage>("/api/v1/devices", { search: props.clientId, limit: 100 })
      .then((p) => {
        const d = p.items.find((x) => x.client_id === props.clientId);
        if (alive && d) setUsername((u) => u || (d.username ?? d.client_id));
      })
      .catch(() => {
        // Only a convenience: the field stays as it is.
      });
    return () => {
      alive = false;
    };
  }, [props.clientId, props.username]);

  const submit = async (e: Event) => {
    e.preventDefault();
    const t = topic.trim();
    const bad = !t ? "Enter a topic." : action === "publish" ? (validTopicName(t) ? undefined : "A topic name has no wildcards.") : validFilter(t) ? undefined : "Wildcards must be whole levels (+ anywhere, # only last).";
    setTopicError(bad);
    if (bad) {
      document.getElementById("check-topic")?.focus();
      return;
    }
    const req: AclCheckRequest = {
      client_id: clientId,
      username: username === "" ? null : username,
      action,
      topic: t,
      qos: Number(qos),
      retain: action === "publish" && retain,
    };
    const res = await check.run(() => api.post<AclCheckResult>("/api/v1/acl/check", req));
    if (res) {
      setAnswer({ req, res });
      props.onDecided(res.decided_by === "rule" && res.rule ? res.rule.id : null);
    }
  };

  const words = answer ? checkWords(answer.res, answer.req) : null;
  const rule = answer?.res.rule ?? null;
  return (
    <section class="card" aria-labelledby="check-title">
      <h2 id="check-title" class="card-title">
        Check access
      </h2>
      <form onSubmit={submit} noValidate>
        <div class="row">
          <Field label="Client id" id="check-client">
            <input id="check-client" required value={clientId} onInput={(e) => setClientId(e.currentTarget.value)} autocomplete="off" />
          </Field>
          <Field label="User name" id="check-user" hint="Empty: none">
            <input id="check-user" value={username} onInput={(e) => setUsername(e.currentTarget.value)} autocomplete="off" aria-describedby="check-user-hint" />
          </Field>
          <Field label="Action" id="check-action">
            <select id="check-action" value={action} onChange={(e) => setAction(e.currentTarget.value as AclCheckRequest["action"])}>
              <option value="publish">Publish</option>
              <option value="subscribe">Subscribe</option>
            </select>
          </Field>
          <Field label="Topic" id="check-topic">
            <input
              id="check-topic"
              class="mono"
              required
              value={topic}
              onInput={(e) => setTopic(e.currentTarget.value)}
              aria-invalid={topicError ? "true" : undefined}
              aria-describedby={topicError ? "check-topic-err" : undefined}
              autocomplete="off"
              spellcheck={false}
            />
            <FieldError id="check-topic-err" error={topicError} />
          </Field>
          <Field label="QoS" id="check-qos">
            <select id="check-qos" value={qos} onChange={(e) => setQos(e.currentTarget.value)}>
              <option value="0">0</option>
              <option value="1">1</option>
              <option value="2">2</option>
            </select>
          </Field>
          <label class="check">
            <input type="checkbox" checked={retain && action === "publish"} disabled={action !== "publish"} onChange={(e) => setRetain(e.currentTarget.checked)} />
            Retain
          </label>
          <button type="submit" class="primary" disabled={check.busy || !clientId}>
            Check access
          </button>
        </div>
      </form>
      <p class="muted small">
        The user name is the one the client authenticates as: for a device, its user name, or its client id if it has none. Rules
        inlined in a client's JWT are not considered.
      </p>
      <ErrorBanner error={check.error} onDismiss={check.clear} />
      <div role="status" aria-live="polite" aria-atomic="true">
        {answer && words && (
          <div class={`check-result ${answer.res.allowed ? "allowed" : "denied"}`} data-allowed={String(answer.res.allowed)}>
            <p class="check-headline">
              {answer.res.allowed ? <Badge kind="ok">Allowed</Badge> : <Badge kind="bad">Denied</Badge>} <strong>{words.headline}</strong>
            </p>
            <p>{words.explanation}</p>
            {rule && (
              <p>
                {props.ruleIds.includes(rule.id) ? (
                  <button type="button" class="small" onClick={() => props.onShowRule(rule.id)}>
                    Show rule #{rule.id} in the list
                  </button>
                ) : (
                  <span class="muted small">Rule #{rule.id} was added since the list loaded; loading it…</span>
                )}
              </p>
            )}
          </div>
        )}
      </div>
    </section>
  );
}
