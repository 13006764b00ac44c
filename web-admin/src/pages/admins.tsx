import { Page } from "../components";

export function AdminUsers() {
  return <Page title="AdminUsers">TODO</Page>;
}
