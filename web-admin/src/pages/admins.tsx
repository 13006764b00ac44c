// Admin users and API keys (admins only; the route is only offered to admins). Passwords and
// keys the API generates are shown once, with a copy button. Changing or deleting your own
// account says what happens (your logins end) and then signs you out.

import { useState } from "preact/hooks";
import { api, seg, type AdminUserItem, type ApiKeyItem, type CreatedAdminUser, type CreatedApiKey, type Role, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { Badge, Confirm, Empty, ErrorBanner, Field, Loading, Notice, Page } from "../components";
import { useAction, useAsync } from "../hooks";
import { ago, when } from "../lib/format";
import { generatePassword, passwordProblem } from "../lib/password";
import { FieldError, FormDialog, SecretOnce } from "./clients/shared";

type AdminUserList = Schemas["AdminUserList"];
type ApiKeyList = Schemas["ApiKeyList"];
type CreateAdminUser = Schemas["CreateAdminUser"];
type CreateApiKey = Schemas["CreateApiKey"];

const ROLES: [Role, string][] = [
  ["viewer", "Viewer — reads everything"],
  ["operator", "Operator — also manages devices, ACLs and the live broker"],
  ["admin", "Admin — also manages admin users and API keys"],
];

const USERNAME_RE = /^[A-Za-z0-9._@-]{1,64}$/;

interface Secret {
  title: string;
  what: string;
  value: string;
  copyLabel: string;
  note?: string;
}

type Dialog =
  | { kind: "add-user" }
  | { kind: "role"; user: AdminUserItem }
  | { kind: "password"; user: AdminUserItem }
  | { kind: "delete-user"; user: AdminUserItem }
  | { kind: "add-key" }
  | { kind: "revoke"; key: ApiKeyItem };

export function AdminUsers() {
  const auth = useAuth();
  const users = useAsync(() => api.get<AdminUserList>("/api/v1/admin/users"), []);
  const keys = useAsync(() => api.get<ApiKeyList>("/api/v1/admin/api-keys"), []);
  const [dialog, setDialog] = useState<Dialog | null>(null);
  const [secret, setSecret] = useState<Secret | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const act = useAction();

  const close = () => {
    setDialog(null);
    act.clear();
  };
  /** After a change to one's own account the server has ended its logins: sign out here too. */
  const selfChanged = () => api.expire();

  const deleteUser = async (u: AdminUserItem) => {
    const ok = await act.run(async () => {
      await api.del(`/api/v1/admin/users/${seg(u.username)}`);
      return true;
    });
    if (!ok) return;
    if (u.username === auth.username) return selfChanged();
    setDialog(null);
    setNotice(`Deleted admin user ${u.username}; their logins have ended.`);
    users.reload();
  };
  const revoke = async (k: ApiKeyItem) => {
    const ok = await act.run(async () => {
      await api.del(`/api/v1/admin/api-keys/${seg(k.id)}`);
      return true;
    });
    if (!ok) return;
    setDialog(null);
    setNotice(`Revoked API key ${k.name} (${k.id}).`);
    keys.reload();
  };

  const now = Date.now();
  return (
    <Page title="Admin users">
      {notice && (
        <Notice>
          <span>{notice}</span>
          <button type="button" class="link" onClick={() => setNotice(null)} aria-label="Dismiss notice">
            ×
          </button>
        </Notice>
      )}
      {secret && (
        <SecretOnce title={secret.title} what={secret.what} value={secret.value} copyLabel={secret.copyLabel} onDone={() => setSecret(null)}>
          {secret.note && <p>{secret.note}</p>}
        </SecretOnce>
      )}

      <section aria-labelledby="users-title">
        <div class="section-head">
          <h2 id="users-title">Users</h2>
          <button type="button" class="primary" onClick={() => setDialog({ kind: "add-user" })}>
            Add user
          </button>
        </div>
        <ErrorBanner error={users.error} />
        {users.loading && !users.data ? (
          <Loading label="Loading users…" />
        ) : !users.data ? null : users.data.items.length === 0 ? (
          <Empty>No admin users.</Empty>
        ) : (
          <div class="table-wrap">
            <table>
              <caption class="vh">Admin users</caption>
              <thead>
                <tr>
                  <th scope="col">User name</th>
                  <th scope="col">Role</th>
                  <th scope="col">Created</th>
                  <th scope="col">
                    <span class="vh">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {users.data.items.map((u) => (
                  <tr key={u.username}>
                    <td>
                      {u.username}
                      {u.username === auth.username && (
                        <>
                          {" "}
                          <Badge kind="warn">You</Badge>
                        </>
                      )}
                    </td>
                    <td>{u.role}</td>
                    <td title={when(u.created_at)}>{ago(u.created_at)}</td>
                    <td class="row-actions">
                      <button type="button" class="small" aria-label={`Change role of ${u.username}`} onClick={() => setDialog({ kind: "role", user: u })}>
                        Change role
                      </button>
                      <button type="button" class="small" aria-label={`Reset password of ${u.username}`} onClick={() => setDialog({ kind: "password", user: u })}>
                        Reset password
                      </button>
                      <button type="button" class="small" aria-label={`Delete ${u.username}`} onClick={() => setDialog({ kind: "delete-user", user: u })}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <section aria-labelledby="keys-title">
        <div class="section-head">
          <h2 id="keys-title">API keys</h2>
          <button type="button" class="primary" onClick={() => setDialog({ kind: "add-key" })}>
            Create API key
          </button>
        </div>
        <p class="muted small">
          Programs send a key as <code>Authorization: Bearer &lt;key&gt;</code>. A key is shown once, when it is created.
        </p>
        <ErrorBanner error={keys.error} />
        {keys.loading && !keys.data ? (
          <Loading label="Loading API keys…" />
        ) : !keys.data ? null : keys.data.items.length === 0 ? (
          <Empty>No API keys.</Empty>
        ) : (
          <div class="table-wrap">
            <table>
              <caption class="vh">API keys</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Id</th>
                  <th scope="col">Role</th>
                  <th scope="col">Created by</th>
                  <th scope="col">Created</th>
                  <th scope="col">Expires</th>
                  <th scope="col">Last used</th>
                  <th scope="col">
                    <span class="vh">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {keys.data.items.map((k) => {
                  const expired = !!k.expires_at && Date.parse(k.expires_at) <= now;
                  return (
                    <tr key={k.id}>
                      <td>{k.name}</td>
                      <td>
                        <code>{k.id}</code>
                      </td>
                      <td>{k.role}</td>
                      <td>{k.created_by}</td>
                      <td title={when(k.created_at)}>{ago(k.created_at)}</td>
                      <td>
                        {!k.expires_at ? "never" : when(k.expires_at)}
                        {expired && (
                          <>
                            {" "}
                            <Badge kind="bad">Expired</Badge>
                          </>
                        )}
                      </td>
                      <td>{k.last_used_at ? <span title={when(k.last_used_at)}>{ago(k.last_used_at)}</span> : "never"}</td>
                      <td class="row-actions">
                        <button type="button" class="small" aria-label={`Revoke API key ${k.name}`} onClick={() => setDialog({ kind: "revoke", key: k })}>
                          Revoke
                        </button>
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </section>

      {dialog?.kind === "add-user" && (
        <AddUser
          onCancel={close}
          onCreated={(res) => {
            setDialog(null);
            users.reload();
            if (res.password) {
              setSecret({
                title: `User ${res.user.username} created`,
                what: "password",
                value: res.password,
                copyLabel: "Copy password",
                note: `Give it to ${res.user.username} (${res.user.role}) over a safe channel.`,
              });
            } else {
              setNotice(`User ${res.user.username} (${res.user.role}) created with the password you typed.`);
            }
          }}
        />
      )}
      {dialog?.kind === "role" && (
        <ChangeRole
          user={dialog.user}
          self={dialog.user.username === auth.username}
          onCancel={close}
          onSaved={(u) => {
            if (u.username === auth.username) return selfChanged();
            setDialog(null);
            setNotice(`${u.username} is now ${u.role}; their logins have ended.`);
            users.reload();
          }}
        />
      )}
      {dialog?.kind === "password" && (
        <ResetPassword
          user={dialog.user}
          self={dialog.user.username === auth.username}
          onCancel={close}
          onDone={(u, generated) => {
            if (u.username === auth.username) return selfChanged();
            setDialog(null);
            if (generated) {
              setSecret({ title: `New password for ${u.username}`, what: "password", value: generated, copyLabel: "Copy password", note: `${u.username}'s logins have ended.` });
            } else {
              setNotice(`Password of ${u.username} changed; their logins have ended.`);
            }
          }}
        />
      )}
      {dialog?.kind === "delete-user" && (
        <Confirm
          title={dialog.user.username === auth.username ? "Delete your own account?" : `Delete admin user ${dialog.user.username}?`}
          confirmLabel={dialog.user.username === auth.username ? "Delete my account" : "Delete user"}
          danger
          busy={act.busy}
          onCancel={close}
          onConfirm={() => deleteUser(dialog.user)}
        >
          <ErrorBanner error={act.error} />
          {dialog.user.username === auth.username ? (
            <p class="warn-text">
              <strong>This is you ({auth.username}).</strong> You are signed out at once and can no longer sign in with this account.
              The broker refuses to delete the last admin.
            </p>
          ) : (
            <p>
              {dialog.user.username} ({dialog.user.role}) can no longer sign in; their logins end at once.
            </p>
          )}
        </Confirm>
      )}
      {dialog?.kind === "add-key" && (
        <AddKey
          onCancel={close}
          onCreated={(res) => {
            setDialog(null);
            keys.reload();
            setSecret({
              title: `API key ${res.api_key.name} created`,
              what: "API key",
              value: res.key,
              copyLabel: "Copy API key",
              note: `Role ${res.api_key.role}; ${res.api_key.expires_at ? `expires ${when(res.api_key.expires_at)}` : "never expires"}. Send it as Authorization: Bearer <key>.`,
            });
          }}
        />
      )}
      {dialog?.kind === "revoke" && (
        <Confirm title={`Revoke API key ${dialog.key.name}?`} confirmLabel="Revoke key" danger busy={act.busy} onCancel={close} onConfirm={() => revoke(dialog.key)}>
          <ErrorBanner error={act.error} />
          <p>
            Programs using key <code>{dialog.key.id}</code> ({dialog.key.role}) are refused at once.
          </p>
        </Confirm>
      )}
    </Page>
  );
}

function RoleSelect(props: { id: string; value: Role; onChange: (r: Role) => void }) {
  return (
    <select id={props.id} value={props.value} onChange={(e) => props.onChange(e.currentTarget.value as Role)}>
      {ROLES.map(([r, label]) => (
        <option key={r} value={r}>
          {label}
        </option>
      ))}
    </select>
  );
}

/** "Generate a password" or "Type a password", and the typed one. */
function PasswordChoice(props: {
  name: string;
  generate: boolean;
  allowGenerate: boolean;
  onGenerate: (g: boolean) => void;
  password: string;
  onPassword: (p: string) => void;
  error: string | undefined;
  label: string;
}) {
  const input = !props.generate && (
    <Field label={props.label} id={`${props.name}-input`} hint="12 to 1024 characters.">
      <input
        id={`${props.name}-input`}
        type="password"
        autocomplete="new-password"
        value={props.password}
        onInput={(e) => props.onPassword(e.currentTarget.value)}
        aria-invalid={props.error ? "true" : undefined}
        aria-describedby={`${props.name}-input-hint${props.error ? ` ${props.name}-input-err` : ""}`}
      />
      <FieldError id={`${props.name}-input-err`} error={props.error} />
    </Field>
  );
  if (!props.allowGenerate) return input || null;
  return (
    <fieldset class="plain">
      <legend>Password</legend>
      <label class="check">
        <input type="radio" name={props.name} checked={props.generate} onChange={() => props.onGenerate(true)} />
        Generate a password (shown once)
      </label>
      <label class="check">
        <input type="radio" name={props.name} checked={!props.generate} onChange={() => props.onGenerate(false)} />
        Type a password
      </label>
      {input}
    </fieldset>
  );
}

function AddUser(props: { onCancel: () => void; onCreated: (res: CreatedAdminUser) => void }) {
  const [username, setUsername] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const [generate, setGenerate] = useState(true);
  const [password, setPassword] = useState("");
  const [errors, setErrors] = useState<{ username?: string; password?: string }>({});
  const save = useAction();
  const submit = async () => {
    const e: typeof errors = {};
    if (!USERNAME_RE.test(username)) e.username = "1 to 64 ASCII letters, digits, '.', '_', '-' or '@'.";
    if (!generate) e.password = passwordProblem(password) ?? undefined;
    setErrors(e);
    if (e.username || e.password) {
      document.getElementById(e.username ? "new-user-name" : "new-user-password-input")?.focus();
      return;
    }
    const body: CreateAdminUser = { username, role, password: generate ? null : password };
    const res = await save.run(() => api.post<CreatedAdminUser>("/api/v1/admin/users", body));
    if (res) props.onCreated(res);
  };
  return (
    <FormDialog title="Add admin user" submitLabel="Create user" busy={save.busy} error={save.error} onSubmit={submit} onCancel={props.onCancel}>
      <Field label="User name" id="new-user-name" hint="1 to 64 letters, digits, '.', '_', '-', '@'.">
        <input
          id="new-user-name"
          autocomplete="off"
          value={username}
          onInput={(e) => setUsername(e.currentTarget.value)}
          aria-invalid={errors.username ? "true" : undefined}
          aria-describedby={`new-user-name-hint${errors.username ? " new-user-name-err" : ""}`}
        />
        <FieldError id="new-user-name-err" error={errors.username} />
      </Field>
      <Field label="Role" id="new-user-role">
        <RoleSelect id="new-user-role" value={role} onChange={setRole} />
      </Field>
      <PasswordChoice
        name="new-user-password"
        label="Password"
        allowGenerate
        generate={generate}
        onGenerate={setGenerate}
        password={password}
        onPassword={setPassword}
        error={errors.password}
      />
    </FormDialog>
  );
}

function ChangeRole(props: { user: AdminUserItem; self: boolean; onCancel: () => void; onSaved: (u: AdminUserItem) => void }) {
  const [role, setRole] = useState<Role>(props.user.role);
  const save = useAction();
  const submit = async () => {
    const res = await save.run(() => api.patch<AdminUserItem>(`/api/v1/admin/users/${seg(props.user.username)}`, { role }));
    if (res) props.onSaved(res);
  };
  return (
    <FormDialog title={`Change the role of ${props.user.username}`} submitLabel="Save role" busy={save.busy} error={save.error} onSubmit={submit} onCancel={props.onCancel}>
      <Field label="Role" id="change-role">
        <RoleSelect id="change-role" value={role} onChange={setRole} />
      </Field>
      {props.self ? (
        <p class="warn-text" role="note">
          <strong>This is you.</strong> Your logins end and you are signed out at once.
          {role !== "admin" && " Without the admin role you can no longer manage admin users."} The broker refuses to demote the last
          admin.
        </p>
      ) : (
        <p class="muted small">{props.user.username}'s logins end: they sign in again with the new role.</p>
      )}
    </FormDialog>
  );
}

function ResetPassword(props: { user: AdminUserItem; self: boolean; onCancel: () => void; onDone: (u: AdminUserItem, generated: string | null) => void }) {
  // Your own new password is typed: a generated one would be lost when you are signed out.
  const [generate, setGenerate] = useState(!props.self);
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | undefined>(undefined);
  const save = useAction();
  const submit = async () => {
    const p = generate ? generatePassword() : password;
    const problem = generate ? null : passwordProblem(p);
    setError(problem ?? undefined);
    if (problem) {
      document.getElementById("reset-password-input")?.focus();
      return;
    }
    const res = await save.run(() => api.patch<AdminUserItem>(`/api/v1/admin/users/${seg(props.user.username)}`, { password: p }));
    if (res) props.onDone(res, generate ? p : null);
  };
  return (
    <FormDialog title={`Reset the password of ${props.user.username}`} submitLabel="Reset password" busy={save.busy} error={save.error} onSubmit={submit} onCancel={props.onCancel}>
      <PasswordChoice
        name="reset-password"
        label="New password"
        allowGenerate={!props.self}
        generate={generate}
        onGenerate={setGenerate}
        password={password}
        onPassword={setPassword}
        error={error}
      />
      {props.self ? (
        <p class="warn-text" role="note">
          <strong>This is you.</strong> Your logins end: you are signed out and sign in again with the new password.
        </p>
      ) : (
        <p class="muted small">{props.user.username}'s logins end: they sign in again with the new password.</p>
      )}
    </FormDialog>
  );
}

function AddKey(props: { onCancel: () => void; onCreated: (res: CreatedApiKey) => void }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const [days, setDays] = useState("");
  const [errors, setErrors] = useState<{ name?: string; days?: string }>({});
  const save = useAction();
  const submit = async () => {
    const e: typeof errors = {};
    const n = name.trim();
    if (!n || [...n].length > 128) e.name = "1 to 128 characters.";
    const d = days.trim() === "" ? null : Number(days);
    if (d !== null && (!Number.isInteger(d) || d < 1 || d > 3650)) e.days = "A whole number of days, 1 to 3650 (empty: never).";
    setErrors(e);
    if (e.name || e.days) {
      document.getElementById(e.name ? "key-name" : "key-days")?.focus();
      return;
    }
    const body: CreateApiKey = { name: n, role, expires_in_days: d };
    const res = await save.run(() => api.post<CreatedApiKey>("/api/v1/admin/api-keys", body));
    if (res) props.onCreated(res);
  };
  return (
    <FormDialog title="Create API key" submitLabel="Create key" busy={save.busy} error={save.error} onSubmit={submit} onCancel={props.onCancel}>
      <Field label="Name" id="key-name" hint="What it is for, e.g. “CI deploys”.">
        <input
          id="key-name"
          autocomplete="off"
          value={name}
          onInput={(e) => setName(e.currentTarget.value)}
          aria-invalid={errors.name ? "true" : undefined}
          aria-describedby={`key-name-hint${errors.name ? " key-name-err" : ""}`}
        />
        <FieldError id="key-name-err" error={errors.name} />
      </Field>
      <Field label="Role" id="key-role">
        <RoleSelect id="key-role" value={role} onChange={setRole} />
      </Field>
      <Field label="Expires after (days)" id="key-days" hint="Empty: never expires.">
        <input
          id="key-days"
          type="number"
          min={1}
          max={3650}
          inputMode="numeric"
          value={days}
          onInput={(e) => setDays(e.currentTarget.value)}
          aria-invalid={errors.days ? "true" : undefined}
          aria-describedby={`key-days-hint${errors.days ? " key-days-err" : ""}`}
        />
        <FieldError id="key-days-err" error={errors.days} />
      </Field>
    </FormDialog>
  );
}
