// Who is signed in, for role-aware pages: a viewer sees no write controls, an operator no
// admin-user pages (the API enforces the same; the UI only hides what would fail).

import { createContext } from "preact";
import { useContext } from "preact/hooks";
import type { Role } from "./api/client";

export interface AuthInfo {
  username: string;
  role: Role;
  /** Operator or admin: may change devices, ACLs, sessions, publish, kick. */
  canOperate: boolean;
  /** Admin: may manage admin users and API keys. */
  isAdmin: boolean;
}

export const AuthContext = createContext<AuthInfo>({ username: "", role: "viewer", canOperate: false, isAdmin: false });

export function useAuth(): AuthInfo {
  return useContext(AuthContext);
}

export function authInfo(username: string, role: Role): AuthInfo {
  return { username, role, canOperate: role === "operator" || role === "admin", isAdmin: role === "admin" };
}
