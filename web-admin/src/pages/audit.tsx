import { Page } from "../components";

export function Audit() {
  return <Page title="Audit">TODO</Page>;
}
