import { Page } from "../components";

export function Acl() {
  return <Page title="Acl">TODO</Page>;
}
