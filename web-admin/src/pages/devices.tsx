import { Page } from "../components";

export function Devices() {
  return <Page title="Devices">TODO</Page>;
}
