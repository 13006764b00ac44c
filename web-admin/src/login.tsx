// The login form (also shown when a session expires).

import { useState } from "preact/hooks";
import { api } from "./api/client";
import { ErrorBanner, Field } from "./components";
import { errorMessage } from "./lib/problem";

export function Login(props: { expired: boolean }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.login(username.trim(), password);
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login" id="main">
      <form onSubmit={submit} class="card" aria-labelledby="login-title">
        <h1 id="login-title">
          <span class="logo" aria-hidden="true">◆</span> Tern admin
        </h1>
        {props.expired && <p class="banner info">Your session ended. Sign in again.</p>}
        <ErrorBanner error={error} />
        <Field label="User name" id="login-user">
          <input id="login-user" name="username" autocomplete="username" required value={username} onInput={(e) => setUsername(e.currentTarget.value)} autofocus />
        </Field>
        <Field label="Password" id="login-password">
          <input id="login-password" name="password" type="password" autocomplete="current-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
        </Field>
        <button type="submit" class="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="muted small">
          No account yet? On the broker's host: <code>tern admin add-user --username admin --role admin</code>
        </p>
      </form>
    </main>
  );
}
