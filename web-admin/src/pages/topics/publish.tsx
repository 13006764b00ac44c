// Publish a test message (operators): POST /api/v1/publish, then what the broker did with it.

import { useId, useRef, useState } from "preact/hooks";
import { api, type PublishRequest, type PublishResult, type Schemas } from "../../api/client";
import { ErrorBanner, Field } from "../../components";
import { useAction } from "../../hooks";
import { bytes } from "../../lib/format";
import { prettyJson } from "../../lib/payload";

type PayloadKind = "text" | "json" | "base64";
type UserProperty = Schemas["UserProperty"];

type PublishBody = PublishRequest;

const MAX_EXPIRY = 4_294_967_295;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function toBase64(bytes: Uint8Array): string {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/** The field errors of the form (empty: it can be sent). */
function validate(f: Form): Partial<Record<keyof Form, string>> {
  const e: Partial<Record<keyof Form, string>> = {};
  if (!f.topic) e.topic = "Enter a topic.";
  else if (/[+#]/.test(f.topic)) e.topic = "A topic name has no wildcards (+ or #); those are for filters.";
  else if (f.topic.includes("\0")) e.topic = "A topic cannot contain NUL.";
  if (f.kind === "json") {
    try {
      JSON.parse(f.payload);
    } catch (err) {
      e.payload = `Not valid JSON: ${err instanceof Error ? err.message : String(err)}`;
    }
  } else if (f.kind === "base64") {
    const b = f.payload.replace(/\s+/g, "");
    if (!BASE64.test(b)) e.payload = "Not valid base64 (standard alphabet, padded with =).";
  }
  if (f.expiry.trim() !== "") {
    const n = Number(f.expiry);
    if (!/^\d+$/.test(f.expiry.trim()) || n > MAX_EXPIRY) e.expiry = `Seconds: a whole number from 0 to ${MAX_EXPIRY}.`;
  }
  if (f.userProps.some((u) => u.name === "" && u.value !== "")) e.userProps = "Every user property needs a name.";
  return e;
}

interface Form {
  topic: string;
  qos: string;
  retain: boolean;
  kind: PayloadKind;
  payload: string;
  contentType: string;
  expiry: string;
  responseTopic: string;
  correlation: string;
  userProps: UserProperty[];
  utf8Indicator: boolean;
}

const INITIAL: Form = {
  topic: "",
  qos: "0",
  retain: false,
  kind: "text",
  payload: "",
  contentType: "",
  expiry: "",
  responseTopic: "",
  correlation: "",
  userProps: [],
  utf8Indicator: false,
};

function body(f: Form): PublishBody {
  const b: PublishBody = { topic: f.topic, qos: Number(f.qos), retain: f.retain };
  if (f.kind === "base64") b.payload_base64 = f.payload.replace(/\s+/g, "");
  else b.payload = f.payload;
  if (f.contentType.trim()) b.content_type = f.contentType.trim();
  if (f.expiry.trim()) b.expiry_interval = Number(f.expiry.trim());
  if (f.responseTopic) b.response_topic = f.responseTopic;
  if (f.correlation) b.correlation_data_base64 = toBase64(new TextEncoder().encode(f.correlation));
  const props = f.userProps.filter((u) => u.name !== "");
  if (props.length) b.user_properties = props;
  if (f.utf8Indicator) b.payload_format_indicator = true;
  return b;
}

function payloadSize(f: Form): number | null {
  if (f.kind !== "base64") return new TextEncoder().encode(f.payload).length;
  const b = f.payload.replace(/\s+/g, "");
  if (!BASE64.test(b)) return null;
  return (b.length / 4) * 3 - (b.endsWith("==") ? 2 : b.endsWith("=") ? 1 : 0);
}

export function PublishTab() {
  const [f, setF] = useState<Form>(INITIAL);
  const [errors, setErrors] = useState<Partial<Record<keyof Form, string>>>({});
  const [result, setResult] = useState<{ topic: string; qos: number; retain: boolean; r: PublishResult } | null>(null);
  const action = useAction();
  const formRef = useRef<HTMLFormElement>(null);
  const resultRef = useRef<HTMLDivElement>(null);
  const id = useId();
  const set = <K extends keyof Form>(k: K, v: Form[K]) => {
    setF((old) => ({ ...old, [k]: v }));
    if (errors[k]) setErrors((e) => ({ ...e, [k]: undefined }));
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    const errs = validate(f);
    setErrors(errs);
    const firstBad = (Object.keys(errs) as (keyof Form)[]).find((k) => errs[k]);
    if (firstBad) {
      formRef.current?.querySelector<HTMLElement>(`[data-field="${firstBad}"]`)?.focus();
      return;
    }
    setResult(null);
    const sent = body(f);
    const r = await action.run(() => api.post<PublishResult>("/api/v1/publish", sent));
    if (r) {
      setResult({ topic: sent.topic, qos: sent.qos ?? 0, retain: sent.retain ?? false, r });
      requestAnimationFrame(() => resultRef.current?.focus());
    }
  };

  const invalid = (k: keyof Form) => (errors[k] ? { "aria-invalid": true as const, "aria-describedby": `pub-${k}-err` } : {});
  const err = (k: keyof Form) =>
    errors[k] ? (
      <small class="field-error" id={`pub-${k}-err`}>
        {errors[k]}
      </small>
    ) : null;
  const size = payloadSize(f);

  return (
    <form ref={formRef} onSubmit={submit} class="publish-form" noValidate aria-label="Publish a message">
      <div class="cols">
        <div>
          <Field id="pub-topic" label="Topic">
            <input
              id="pub-topic"
              data-field="topic"
              value={f.topic}
              onInput={(e) => set("topic", e.currentTarget.value)}
              placeholder="e.g. devices/dev-1/cmd"
              spellcheck={false}
              autocomplete="off"
              required
              class="mono"
              {...invalid("topic")}
            />
            {err("topic")}
          </Field>
          <div class="row">
            <Field id="pub-qos" label="QoS">
              <select id="pub-qos" value={f.qos} onChange={(e) => set("qos", e.currentTarget.value)}>
                <option value="0">0: at most once</option>
                <option value="1">1: at least once</option>
                <option value="2">2: exactly once</option>
              </select>
            </Field>
            <label class="check">
              <input type="checkbox" checked={f.retain} onChange={(e) => set("retain", e.currentTarget.checked)} /> Retain
            </label>
          </div>
          <fieldset class="radios">
            <legend>Payload type</legend>
            {(
              [
                ["text", "Text"],
                ["json", "JSON"],
                ["base64", "Base64 (binary)"],
              ] as [PayloadKind, string][]
            ).map(([k, label]) => (
              <label key={k}>
                <input type="radio" name={`kind-${id}`} value={k} checked={f.kind === k} onChange={() => set("kind", k)} /> {label}
              </label>
            ))}
          </fieldset>
          <Field id="pub-payload" label="Payload">
            <textarea
              id="pub-payload"
              data-field="payload"
              class="mono"
              rows={8}
              value={f.payload}
              spellcheck={false}
              onInput={(e) => set("payload", e.currentTarget.value)}
              placeholder={f.kind === "json" ? '{"temp": 21.5}' : f.kind === "base64" ? "AAEC/w==" : "hello"}
              {...invalid("payload")}
            />
            {err("payload")}
            <small class="muted">
              {size === null ? "" : `${bytes(size)}. `}
              {f.kind === "json" && "Checked as JSON before it is sent; sent as typed. "}
              {f.payload === "" && "Empty: the message has no payload (with Retain, that clears the topic's retained message)."}
            </small>
          </Field>
          {f.kind === "json" && (
            <button
              type="button"
              class="small"
              onClick={() => {
                const p = prettyJson(f.payload);
                if (p === null) setErrors((e) => ({ ...e, payload: "Not valid JSON: nothing to format." }));
                else set("payload", p);
              }}
            >
              Format JSON
            </button>
          )}
        </div>
        <fieldset class="v5">
          <legend>MQTT 5 properties</legend>
          <Field id="pub-ct" label="Content type">
            <input
              id="pub-ct"
              value={f.contentType}
              onInput={(e) => set("contentType", e.currentTarget.value)}
              placeholder={f.kind === "json" ? "application/json" : "e.g. text/plain"}
              spellcheck={false}
            />
          </Field>
          <Field id="pub-expiry" label="Message expiry (seconds)" hint="Empty: it does not expire.">
            <input
              id="pub-expiry"
              data-field="expiry"
              inputMode="numeric"
              value={f.expiry}
              onInput={(e) => set("expiry", e.currentTarget.value)}
              {...(errors.expiry ? invalid("expiry") : { "aria-describedby": "pub-expiry-hint" })}
            />
            {err("expiry")}
          </Field>
          <Field id="pub-rt" label="Response topic">
            <input id="pub-rt" class="mono" value={f.responseTopic} onInput={(e) => set("responseTopic", e.currentTarget.value)} spellcheck={false} />
          </Field>
          <Field id="pub-cd" label="Correlation data (text)">
            <input id="pub-cd" value={f.correlation} onInput={(e) => set("correlation", e.currentTarget.value)} spellcheck={false} />
          </Field>
          <label class="check">
            <input type="checkbox" checked={f.utf8Indicator} onChange={(e) => set("utf8Indicator", e.currentTarget.checked)} /> Payload
            format indicator: UTF-8 text
          </label>
          <UserPropertyRows items={f.userProps} onChange={(v) => set("userProps", v)} />
          {err("userProps")}
        </fieldset>
      </div>
      <div class="toolbar spaced">
        <button type="submit" class="primary" disabled={action.busy}>
          {action.busy ? "Publishing…" : "Publish"}
        </button>
        <button
          type="button"
          onClick={() => {
            setF(INITIAL);
            setErrors({});
            setResult(null);
            action.clear();
          }}
        >
          Reset
        </button>
      </div>
      <ErrorBanner error={action.error} onDismiss={action.clear} />
      <div ref={resultRef} tabIndex={-1} class="publish-result">
        {result && <ResultView {...result} />}
      </div>
    </form>
  );
}

function ResultView(props: { topic: string; qos: number; retain: boolean; r: PublishResult }) {
  const { r } = props;
  if (r.refused) {
    return (
      <div class="banner error" role="alert">
        <span>
          Refused by the broker: {r.refused.reason} (reason code 0x{r.refused.code.toString(16).padStart(2, "0")}). Nothing was delivered.
        </span>
      </div>
    );
  }
  const durable =
    r.committed === true
      ? " Its durable copies were committed."
      : r.committed === false
        ? " Its durable copies could NOT be committed (see the broker's log)."
        : "";
  return (
    <div class="banner info" role="status">
      <span>
        Published to <code>{props.topic}</code> (QoS {props.qos}
        {props.retain ? ", retained" : ""}): {r.matched} matching subscriber{r.matched === 1 ? "" : "s"}.{durable}
      </span>
    </div>
  );
}

function UserPropertyRows(props: { items: UserProperty[]; onChange: (v: UserProperty[]) => void }) {
  const { items, onChange } = props;
  const upd = (i: number, k: keyof UserProperty, v: string) => onChange(items.map((u, j) => (j === i ? { ...u, [k]: v } : u)));
  return (
    <fieldset class="user-props">
      <legend>User properties</legend>
      {items.length === 0 && <p class="muted small">None.</p>}
      {items.map((u, i) => (
        <div class="row" key={i}>
          <input aria-label={`User property ${i + 1} name`} placeholder="name" value={u.name} onInput={(e) => upd(i, "name", e.currentTarget.value)} />
          <input aria-label={`User property ${i + 1} value`} placeholder="value" value={u.value} onInput={(e) => upd(i, "value", e.currentTarget.value)} />
          <button type="button" class="small" aria-label={`Remove user property ${i + 1}`} onClick={() => onChange(items.filter((_, j) => j !== i))}>
            Remove
          </button>
        </div>
      ))}
      <button type="button" class="small" onClick={() => onChange([...items, { name: "", value: "" }])}>
        Add user property
      </button>
    </fieldset>
  );
}
