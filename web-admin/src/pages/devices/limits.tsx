// A device's own limits on its page: the ones set, with their units, and for operators and
// admins an edit form that replaces them (an empty input: not set; all empty clears them).
// The broker reads them when the device connects, so a change applies at its next connection.

import type { JSX } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { api, seg, type Device, type Schemas } from "../../api/client";
import { Empty, ErrorBanner, Facts, Field, Notice } from "../../components";
import { useAction } from "../../hooks";
import {
  LIMIT_FIELDS,
  limitEntries,
  limitHint,
  limitLabel,
  limitsToForm,
  parseLimitsForm,
  type DeviceLimits,
  type LimitGroup,
  type LimitKey,
  type LimitsForm,
} from "../../lib/limits";
import { FieldError } from "../clients/shared";

type UpdateDevice = Schemas["UpdateDevice"];

/** The form's groups, in order, with their legends. */
const GROUPS: [LimitGroup, string][] = [
  ["publish", "Publishing (from the device)"],
  ["outbound", "Delivery (to the device)"],
  ["session", "Session"],
];

/** The "Limits" section: what is set, and the editor for those who may change it. */
export function LimitsSection(props: { device: Device; canOperate: boolean; onSaved: () => void }) {
  const d = props.device;
  const [editing, setEditing] = useState(false);
  // What the PATCH answered, shown until the next poll brings the same (no flash of the old values).
  const [saved, setSaved] = useState<DeviceLimits | null>(null);
  const [notice, setNotice] = useState(false);
  const current = JSON.stringify(d.limits ?? {});
  useEffect(() => setSaved(null), [current]);
  const limits = saved ?? d.limits ?? {};
  const entries = limitEntries(limits);
  const editButton = useRef<HTMLButtonElement>(null);
  const close = () => {
    setEditing(false);
    // The button is back after this render.
    setTimeout(() => editButton.current?.focus(), 0);
  };

  return (
    <section aria-labelledby="limits-title">
      <div class="section-head">
        <h2 id="limits-title">Limits</h2>
        {props.canOperate && !editing && (
          <button
            type="button"
            ref={editButton}
            onClick={() => {
              setNotice(false);
              setEditing(true);
            }}
          >
            Edit limits
          </button>
        )}
      </div>
      <p class="muted small">
        The device's own limits replace the listener's and global values for it; those not set follow them. Changes apply at the
        device's next connection{d.online ? " (kick it to apply them now)" : ""}.
      </p>
      {notice && !editing && <Notice>Limits saved. They apply at the device's next connection.</Notice>}
      {editing ? (
        <LimitsEditor
          clientId={d.client_id}
          initial={limits}
          onCancel={close}
          onSaved={(updated) => {
            setSaved(updated.limits ?? {});
            setNotice(true);
            close();
            props.onSaved();
          }}
        />
      ) : entries.length === 0 ? (
        <Empty>None set: the listener's and global defaults apply.</Empty>
      ) : (
        <Facts items={entries.map((e) => [e.label, e.text] as [string, string])} />
      )}
    </section>
  );
}

/** The edit form: one input per limit, checked here first, then PATCH `{limits}`. */
function LimitsEditor(props: { clientId: string; initial: DeviceLimits; onSaved: (d: Device) => void; onCancel: () => void }) {
  const [form, setForm] = useState<LimitsForm>(() => limitsToForm(props.initial));
  const [errors, setErrors] = useState<Partial<Record<LimitKey, string>>>({});
  const save = useAction();
  useEffect(() => {
    document.getElementById(`limit-${LIMIT_FIELDS[0]?.key ?? ""}`)?.focus();
  }, []);

  const set = (key: LimitKey, value: string) => setForm((f) => ({ ...f, [key]: value }));
  const clearAll = () => {
    setForm(limitsToForm({}));
    setErrors({});
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    const parsed = parseLimitsForm(form);
    setErrors(parsed.errors);
    const bad = LIMIT_FIELDS.find((f) => parsed.errors[f.key]);
    if (bad) {
      document.getElementById(`limit-${bad.key}`)?.focus();
      return;
    }
    const body: UpdateDevice = { limits: parsed.limits };
    const updated = await save.run(() => api.patch<Device>(`/api/v1/devices/${seg(props.clientId)}`, body));
    if (updated) props.onSaved(updated);
  };
  const onKeyDown = (e: JSX.TargetedKeyboardEvent<HTMLFormElement>) => {
    if (e.key === "Escape" && !save.busy && !e.defaultPrevented) {
      e.preventDefault();
      props.onCancel();
    }
  };

  return (
    <form
      class="card"
      onSubmit={submit}
      onKeyDown={onKeyDown}
      noValidate
      aria-labelledby="limits-form-title"
      aria-describedby={save.error ? "limits-form-error" : undefined}
    >
      <h3 id="limits-form-title" class="card-title">
        Edit limits
      </h3>
      <p class="muted small">
        Whole numbers; leave a field empty to follow the listener's or global value. Save with every field empty to remove the
        device's own limits.
      </p>
      <div id="limits-form-error">
        <ErrorBanner error={save.error} onDismiss={save.clear} />
      </div>
      {GROUPS.map(([group, legend]) => (
        <fieldset class="plain" key={group}>
          <legend>{legend}</legend>
          <div class="grid">
            {LIMIT_FIELDS.filter((f) => f.group === group).map((f) => {
              const id = `limit-${f.key}`;
              const error = errors[f.key];
              return (
                <Field key={f.key} label={limitLabel(f)} id={id} hint={limitHint(f)}>
                  <input
                    id={id}
                    inputMode="numeric"
                    autocomplete="off"
                    spellcheck={false}
                    value={form[f.key]}
                    onInput={(e) => set(f.key, e.currentTarget.value)}
                    aria-invalid={error ? "true" : undefined}
                    aria-describedby={`${id}-hint${error ? ` ${id}-err` : ""}`}
                  />
                  <FieldError id={`${id}-err`} error={error} />
                </Field>
              );
            })}
          </div>
        </fieldset>
      ))}
      <div class="dialog-actions">
        <button type="button" onClick={clearAll} disabled={save.busy}>
          Clear all fields
        </button>
        <button type="button" onClick={props.onCancel} disabled={save.busy}>
          Cancel
        </button>
        <button type="submit" class="primary" disabled={save.busy}>
          {save.busy ? "Saving…" : "Save limits"}
        </button>
      </div>
    </form>
  );
}
