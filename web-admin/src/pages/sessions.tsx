import { Page } from "../components";

export function Sessions() {
  return <Page title="Sessions">TODO</Page>;
}
