import { Page } from "../components";

export function Clients() {
  return <Page title="Clients">TODO</Page>;
}
