import { Page } from "../components";

export function DeviceDetailPage(props: { clientId: string }) {
  return <Page title={props.clientId}>TODO</Page>;
}
