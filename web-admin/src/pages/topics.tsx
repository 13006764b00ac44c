import { Page } from "../components";

export function Topics() {
  return <Page title="Topics">TODO</Page>;
}
