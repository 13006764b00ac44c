// The create wizard (operators only): step 1 the device, step 2 its credentials, shown once.
// The step heading takes the focus when the step changes; Escape or Cancel on step 1 returns
// to the list (on step 2 only "Done" leaves, so a stray Escape cannot lose the password).

import type { JSX } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, type CreatedDevice, type Schemas } from "../../api/client";
import { ErrorBanner, Field } from "../../components";
import { useAction } from "../../hooks";
import { go, href } from "../../lib/router";
import { parseLabels } from "../../lib/snippets";
import { ShownOnce } from "./credentials";

type CreateDevice = Schemas["CreateDevice"];

export function CreateDeviceWizard(props: { onCancel: () => void }) {
  const [created, setCreated] = useState<CreatedDevice | null>(null);
  const heading = useRef<HTMLHeadingElement>(null);
  const step = created ? 2 : 1;
  const first = useRef(true);
  useEffect(() => {
    // On entry the page title has the focus (Page does that); later steps take it here.
    if (first.current) {
      first.current = false;
      return;
    }
    heading.current?.focus();
  }, [step]);
  const onKeyDown = (e: JSX.TargetedKeyboardEvent<HTMLDivElement>) => {
    if (e.key === "Escape" && step === 1 && !e.defaultPrevented) {
      e.preventDefault();
      props.onCancel();
    }
  };
  return (
    <div class="wizard card" onKeyDown={onKeyDown}>
      <ol class="steps" aria-label="Steps">
        <li aria-current={step === 1 ? "step" : undefined}>Device</li>
        <li aria-current={step === 2 ? "step" : undefined}>Credentials</li>
      </ol>
      {created ? (
        <>
          <h2 ref={heading} tabIndex={-1} id="wizard-step">
            Step 2 of 2: credentials of {created.device.client_id}, shown once
          </h2>
          <p role="status">
            Device <strong>{created.device.client_id}</strong> was created.
          </p>
          <ShownOnce device={created.device} password={created.password} />
          <div class="dialog-actions">
            <button type="button" class="primary" onClick={() => go(href(["devices", created.device.client_id]))}>
              Done
            </button>
          </div>
        </>
      ) : (
        <>
          <h2 ref={heading} tabIndex={-1} id="wizard-step">
            Step 1 of 2: the device
          </h2>
          <DeviceForm onCreated={setCreated} onCancel={props.onCancel} />
        </>
      )}
    </div>
  );
}

function DeviceForm(props: { onCreated: (c: CreatedDevice) => void; onCancel: () => void }) {
  const [clientId, setClientId] = useState("");
  const [username, setUsername] = useState("");
  const [generate, setGenerate] = useState(true);
  const [password, setPassword] = useState("");
  const [scram, setScram] = useState(false);
  const [certIdentity, setCertIdentity] = useState("");
  const [labelText, setLabelText] = useState("");
  const [formError, setFormError] = useState<string | null>(null);
  const action = useAction();
  const parsed = parseLabels(labelText);
  const hasPassword = generate || password !== "";

  const submit = async (e: Event) => {
    e.preventDefault();
    setFormError(null);
    if (!clientId) {
      setFormError("Give the device a client id.");
      document.getElementById("dev-client-id")?.focus();
      return;
    }
    if (parsed.errors.length) {
      setFormError(`Labels: ${parsed.errors.join("; ")}`);
      document.getElementById("dev-labels")?.focus();
      return;
    }
    const body: CreateDevice = { client_id: clientId, labels: parsed.labels };
    if (username) body.username = username;
    if (generate) body.generate_password = true;
    else if (password) body.password = password;
    if (hasPassword && scram) body.scram = true;
    if (certIdentity.trim()) body.cert_identity = certIdentity.trim();
    const res = await action.run(async () => {
      try {
        return await api.post<CreatedDevice>("/api/v1/devices", body);
      } catch (err) {
        // The API's 409 detail is the database's message: say what it means first.
        if (err instanceof ApiError && err.status === 409) {
          throw new Error(`A device with this client id or user name already exists (${err.message}).`);
        }
        throw err;
      }
    });
    // The API returns only a generated password; an entered one is shown from the form.
    if (res) props.onCreated({ ...res, password: res.password ?? (!generate && password ? password : null) });
  };

  const error = formError ?? action.error;
  return (
    <form onSubmit={submit} noValidate aria-describedby={error ? "wizard-error" : undefined}>
      <div id="wizard-error">
        <ErrorBanner error={error} />
      </div>
      <Field label="Client id" id="dev-client-id" hint="The MQTT client id the device connects with (unique).">
        <input
          id="dev-client-id"
          required
          autocomplete="off"
          spellcheck={false}
          value={clientId}
          aria-describedby="dev-client-id-hint"
          onInput={(e) => setClientId(e.currentTarget.value)}
        />
      </Field>
      <Field
        label="User name (optional)"
        id="dev-username"
        hint="The user name it presents (unique). Clients such as mosquitto_pub send a password only with a user name."
      >
        <input
          id="dev-username"
          autocomplete="off"
          spellcheck={false}
          value={username}
          aria-describedby="dev-username-hint"
          onInput={(e) => setUsername(e.currentTarget.value)}
        />
      </Field>
      <fieldset class="plain">
        <legend>Password</legend>
        <label class="check">
          <input type="checkbox" checked={generate} onChange={(e) => setGenerate(e.currentTarget.checked)} /> Generate a password
        </label>
        {!generate && (
          <Field label="Device password" id="dev-password" hint="Leave empty for a device that authenticates with a certificate or a JWT.">
            <input
              id="dev-password"
              type="password"
              autocomplete="new-password"
              value={password}
              aria-describedby="dev-password-hint"
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          </Field>
        )}
        <label class="check">
          <input type="checkbox" checked={scram && hasPassword} disabled={!hasPassword} onChange={(e) => setScram(e.currentTarget.checked)} /> Also
          store a SCRAM-SHA-256 verifier (MQTT 5 enhanced authentication)
        </label>
      </fieldset>
      <Field
        label="Certificate identity (optional)"
        id="dev-cert"
        hint="The CN, DN, SAN or SHA-256 fingerprint of its client certificate, as the listener maps it."
      >
        <input
          id="dev-cert"
          autocomplete="off"
          spellcheck={false}
          value={certIdentity}
          aria-describedby="dev-cert-hint"
          onInput={(e) => setCertIdentity(e.currentTarget.value)}
        />
      </Field>
      <Field label="Labels (optional)" id="dev-labels" hint="One key=value per line, e.g. site=berlin.">
        <textarea
          id="dev-labels"
          rows={3}
          spellcheck={false}
          value={labelText}
          aria-describedby="dev-labels-hint"
          aria-invalid={parsed.errors.length > 0}
          onInput={(e) => setLabelText(e.currentTarget.value)}
        />
      </Field>
      {parsed.errors.length > 0 && (
        <ul class="field-errors small" aria-live="polite">
          {parsed.errors.map((m) => (
            <li key={m}>{m}</li>
          ))}
        </ul>
      )}
      <div class="dialog-actions">
        <button type="button" onClick={props.onCancel}>
          Cancel
        </button>
        <button type="submit" class="primary" disabled={action.busy}>
          {action.busy ? "Creating…" : "Create device"}
        </button>
      </div>
    </form>
  );
}
