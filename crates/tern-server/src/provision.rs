//! `tern device ...` and `tern acl ...`: provisioning commands over the directory store. The
//! logic (hashing, validation, audit entries with actor "cli") lives in
//! `tern_auth::provision`; this module parses arguments, reads the password from stdin and
//! prints results. Password hashes and SCRAM verifiers are never printed.

use std::fmt::Write as _;
use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use tern_auth::provision::{self, AclRuleSummary, DeviceSummary, NewAclRule, NewDevice, PasswordSource};
use tern_broker::store::{AclAction, DirectoryStore, Permission};

/// The audit actor of every CLI change.
pub(crate) const ACTOR: &str = "cli";

/// `tern device ...`
#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCommand {
    /// Provision a device (MQTT client credentials).
    Add(DeviceAddArgs),
    /// List devices (secrets are never shown, only whether they are set).
    List(ListArgs),
    /// Refuse new connections of a device.
    Disable(ClientIdArg),
    /// Allow a disabled device again.
    Enable(ClientIdArg),
    /// Delete a device.
    Remove(ClientIdArg),
    /// Show a device's own limits, or replace them (`--limit name=number`, repeatable;
    /// `--clear` removes them all). They apply at its next connection.
    Limits(DeviceLimitsArgs),
}

/// Arguments of `tern device limits`.
#[derive(Debug, Args)]
pub(crate) struct DeviceLimitsArgs {
    /// The device's client id.
    pub(crate) client_id: String,
    /// A limit, `name=number` (repeatable); the set given replaces the device's limits.
    #[arg(long = "limit", value_name = "NAME=NUMBER", conflicts_with = "clear")]
    pub(crate) limits: Vec<String>,
    /// Remove all of the device's own limits.
    #[arg(long)]
    pub(crate) clear: bool,
}

/// Arguments of `tern device add`.
#[derive(Debug, Args)]
pub(crate) struct DeviceAddArgs {
    /// The client id the device connects with (unique).
    #[arg(long)]
    pub(crate) client_id: String,
    /// The user name it presents (unique when set).
    #[arg(long)]
    pub(crate) username: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "generate_password")]
    pub(crate) password_stdin: bool,
    /// Generate a random password and print it once on standard output.
    #[arg(long)]
    pub(crate) generate_password: bool,
    /// The expected certificate identity (CN, DN, SAN or SHA-256, per listener mapping).
    #[arg(long)]
    pub(crate) cert_identity: Option<String>,
    /// Also store a SCRAM-SHA-256 verifier (MQTT 5 enhanced authentication).
    #[arg(long)]
    pub(crate) scram: bool,
    /// A label, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// One of the device's own limits, `name=number` (repeatable), e.g. `publish_rate=10`
    /// (names: docs/limits.md, "Per device").
    #[arg(long = "limit", value_name = "NAME=NUMBER")]
    pub(crate) limits: Vec<String>,
}

/// A device's client id.
#[derive(Debug, Args)]
pub(crate) struct ClientIdArg {
    /// The device's client id.
    pub(crate) client_id: String,
}

/// Output options of the list commands.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tern acl ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AclCommand {
    /// Add an ACL rule.
    Add(AclAddArgs),
    /// List ACL rules.
    List(ListArgs),
    /// Delete an ACL rule by id.
    Remove(AclIdArg),
}

/// What a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ActionArg {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

/// Arguments of `tern acl add`.
#[derive(Debug, Args)]
pub(crate) struct AclAddArgs {
    /// Grant the action.
    #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
    pub(crate) allow: bool,
    /// Forbid the action (a matching deny overrides every allow).
    #[arg(long)]
    pub(crate) deny: bool,
    /// Which action the rule governs.
    #[arg(long, value_enum)]
    pub(crate) action: ActionArg,
    /// Topic filter; %c and %u stand for the client id and user name.
    #[arg(long)]
    pub(crate) topic: String,
    /// Only for this client id.
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    /// Only for this user name.
    #[arg(long)]
    pub(crate) username: Option<String>,
    /// Highest QoS allowed (allow rules only).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) max_qos: Option<u8>,
    /// Refuse retained publishes (allow rules only).
    #[arg(long)]
    pub(crate) no_retain: bool,
}

/// An ACL rule id.
#[derive(Debug, Args)]
pub(crate) struct AclIdArg {
    /// The rule's id (see `tern acl list`).
    pub(crate) id: i64,
}

/// Reads a password from the first line of `input` (without its line ending).
pub(crate) fn read_password(input: &mut dyn BufRead) -> Result<String> {
    let mut line = String::new();
    input.read_line(&mut line).context("cannot read the password from standard input")?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(pw.to_string())
}

/// The request for `device add`, reading stdin if asked.
pub(crate) fn new_device(args: DeviceAddArgs, stdin: &mut dyn BufRead) -> Result<NewDevice> {
    let password = if args.password_stdin {
        PasswordSource::Given(read_password(stdin)?)
    } else if args.generate_password {
        PasswordSource::Generate
    } else {
        PasswordSource::None
    };
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.labels {
        let Some((k, v)) = l.split_once('=') else { bail!("--label {l:?}: expected key=value") };
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(NewDevice {
        client_id: args.client_id,
        username: args.username,
        password,
        cert_identity: args.cert_identity,
        scram: args.scram,
        labels,
        limits: parse_limits(&args.limits)?,
    })
}

/// `--limit name=number` options as a device's limits.
fn parse_limits(args: &[String]) -> Result<tern_broker::store::DeviceLimits> {
    let mut map = serde_json::Map::new();
    for l in args {
        let Some((k, v)) = l.split_once('=') else { bail!("--limit {l:?}: expected name=number") };
        let n: u64 =
            v.trim().parse().map_err(|_| anyhow::anyhow!("--limit {l:?}: {v:?} is not a whole number"))?;
        map.insert(k.trim().to_string(), n.into());
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| anyhow::anyhow!("--limit: {e}"))
}

/// The request for `acl add`.
pub(crate) fn new_acl_rule(args: AclAddArgs) -> NewAclRule {
    NewAclRule {
        permission: if args.deny { Permission::Deny } else { Permission::Allow },
        action: match args.action {
            ActionArg::Publish => AclAction::Publish,
            ActionArg::Subscribe => AclAction::Subscribe,
            ActionArg::All => AclAction::All,
        },
        topic: args.topic,
        client_id: args.client_id,
        username: args.username,
        max_qos: args.max_qos,
        no_retain: args.no_retain,
    }
}

fn dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}

/// Renders devices as an aligned table.
pub(crate) fn device_table(devices: &[DeviceSummary]) -> String {
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|d| {
            [
                d.client_id.clone(),
                dash(d.username.as_deref()).to_string(),
                yes_no(d.enabled).to_string(),
                yes_no(d.has_password).to_string(),
                yes_no(d.has_scram).to_string(),
                dash(d.cert_identity.as_deref()).to_string(),
            ]
        })
        .collect();
    table(["CLIENT_ID", "USERNAME", "ENABLED", "PASSWORD", "SCRAM", "CERT_IDENTITY"], &rows)
}

/// Renders ACL rules as an aligned table.
pub(crate) fn acl_table(rules: &[AclRuleSummary]) -> String {
    let rows: Vec<[String; 8]> = rules
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.permission.to_string(),
                r.action.to_string(),
                r.topic.clone(),
                dash(r.client_id.as_deref()).to_string(),
                dash(r.username.as_deref()).to_string(),
                r.max_qos.map_or_else(|| "-".to_string(), |q| q.to_string()),
                if r.allow_retain == Some(false) { "no" } else { "yes" }.to_string(),
            ]
        })
        .collect();
    table(["ID", "PERMISSION", "ACTION", "TOPIC", "CLIENT_ID", "USERNAME", "MAX_QOS", "RETAIN"], &rows)
}

fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < N {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            } else {
                l.push_str(c);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Runs a `tern device` command. Results go to `out` (stdout; the generated password is the
/// only thing `device add` prints there), notices to `err` (stderr).
pub(crate) async fn run_device(
    cmd: DeviceCommand,
    store: &dyn DirectoryStore,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    match cmd {
        DeviceCommand::Add(args) => {
            let req = new_device(args, stdin)?;
            let added = provision::add_device(store, req, ACTOR).await?;
            writeln!(err, "device {:?} added", added.device.client_id)?;
            if let Some(pw) = &added.generated_password {
                writeln!(err, "generated password (shown only now):")?;
                writeln!(out, "{pw}")?;
            }
        }
        DeviceCommand::List(args) => {
            let devices = provision::list_devices(store).await?;
            if args.json {
                writeln!(out, "{}", provision::to_json(&devices))?;
            } else {
                write!(out, "{}", device_table(&devices))?;
            }
        }
        DeviceCommand::Disable(a) => {
            provision::set_device_enabled(store, &a.client_id, false, ACTOR).await?;
            writeln!(err, "device {:?} disabled (connected clients stay until they reconnect)", a.client_id)?;
        }
        DeviceCommand::Enable(a) => {
            provision::set_device_enabled(store, &a.client_id, true, ACTOR).await?;
            writeln!(err, "device {:?} enabled", a.client_id)?;
        }
        DeviceCommand::Remove(a) => {
            provision::remove_device(store, &a.client_id, ACTOR).await?;
            writeln!(err, "device {:?} removed", a.client_id)?;
        }
        DeviceCommand::Limits(a) => {
            if a.limits.is_empty() && !a.clear {
                let d = provision::get_device(store, &a.client_id).await?;
                writeln!(out, "{}", serde_json::to_string(&d.limits)?)?;
            } else {
                let limits = parse_limits(&a.limits)?;
                let update = provision::DeviceUpdate { limits: Some(limits), ..Default::default() };
                let (_, after) = provision::update_device(store, &a.client_id, update, ACTOR).await?;
                writeln!(out, "{}", serde_json::to_string(&after.limits)?)?;
                writeln!(err, "device {:?}: limits set; they apply at its next connection", a.client_id)?;
            }
        }
    }
    Ok(())
}

/// Runs a `tern acl` command (rule ids and tables to `out`, notices to `err`).
pub(crate) async fn run_acl(
    cmd: AclCommand,
    store: &dyn DirectoryStore,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    match cmd {
        AclCommand::Add(args) => {
            let id = provision::add_acl_rule(store, new_acl_rule(args), ACTOR).await?.id;
            writeln!(err, "ACL rule added")?;
            writeln!(out, "{id}")?;
        }
        AclCommand::List(args) => {
            let rules = provision::list_acl_rules(store).await?;
            if args.json {
                writeln!(out, "{}", provision::to_json(&rules))?;
            } else {
                write!(out, "{}", acl_table(&rules))?;
            }
        }
        AclCommand::Remove(a) => {
            provision::remove_acl_rule(store, a.id, ACTOR).await?;
            writeln!(err, "ACL rule {} removed", a.id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct DeviceCli {
        #[command(subcommand)]
        cmd: DeviceCommand,
    }

    #[derive(Debug, Parser)]
    struct AclCli {
        #[command(subcommand)]
        cmd: AclCommand,
    }

    fn device(args: &[&str]) -> Result<DeviceCommand, clap::Error> {
        DeviceCli::try_parse_from(std::iter::once("device").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn acl(args: &[&str]) -> Result<AclCommand, clap::Error> {
        AclCli::try_parse_from(std::iter::once("acl").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn device_add_arguments() {
        let Ok(DeviceCommand::Add(a)) =
            device(&["add", "--client-id", "s1", "--username", "u", "--password-stdin", "--scram"])
        else {
            panic!("parse failed");
        };
        let req = new_device(a, &mut &b"pw with spaces\r\nignored\n"[..]).unwrap();
        assert_eq!(req.password, PasswordSource::Given("pw with spaces".into()));
        assert!(req.scram);
        assert!(device(&["add", "--client-id", "s1", "--password-stdin", "--generate-password"]).is_err());
        assert!(device(&["add"]).is_err(), "client id is required");
        let Ok(DeviceCommand::Add(a)) = device(&["add", "--client-id", "s1", "--password-stdin"]) else {
            panic!()
        };
        assert!(new_device(a, &mut &b"\n"[..]).is_err(), "empty password");
        assert!(matches!(device(&["disable", "s1"]), Ok(DeviceCommand::Disable(ClientIdArg { .. }))));
        assert!(matches!(device(&["list", "--json"]), Ok(DeviceCommand::List(ListArgs { json: true }))));
        let Ok(DeviceCommand::Limits(l)) = device(&["limits", "s1", "--limit", "publish_rate=5"]) else {
            panic!("limits arguments")
        };
        assert_eq!(
            (l.client_id.as_str(), l.limits.as_slice(), l.clear),
            ("s1", &["publish_rate=5".to_string()][..], false)
        );
        assert!(device(&["limits", "s1", "--limit", "publish_rate=5", "--clear"]).is_err());
        assert_eq!(
            parse_limits(&["publish_rate=5".into(), "max_retained = 2".into()])
                .ok()
                .map(|l| (l.publish_rate, l.max_retained)),
            Some((Some(5), Some(2)))
        );
        assert!(parse_limits(&["colour=5".into()]).is_err_and(|e| e.to_string().contains("unknown field")));
        assert!(parse_limits(&["publish_rate=-1".into()]).is_err());
        assert!(parse_limits(&["publish_rate".into()]).is_err());
    }

    #[test]
    fn acl_add_arguments() {
        let Ok(AclCommand::Add(a)) = acl(&[
            "add",
            "--allow",
            "--action",
            "publish",
            "--topic",
            "d/%c/#",
            "--client-id",
            "c",
            "--max-qos",
            "1",
            "--no-retain",
        ]) else {
            panic!("parse failed");
        };
        let r = new_acl_rule(a);
        assert_eq!(
            (r.permission, r.action, r.max_qos, r.no_retain),
            (Permission::Allow, AclAction::Publish, Some(1), true)
        );
        assert!(acl(&["add", "--action", "all", "--topic", "t"]).is_err(), "--allow or --deny");
        assert!(acl(&["add", "--allow", "--deny", "--action", "all", "--topic", "t"]).is_err());
        assert!(acl(&["add", "--deny", "--action", "all", "--topic", "t", "--max-qos", "3"]).is_err());
        assert!(matches!(acl(&["remove", "7"]), Ok(AclCommand::Remove(AclIdArg { id: 7 }))));
    }

    #[test]
    fn tables_show_no_secrets() {
        let d = DeviceSummary {
            client_id: "sensor-1".into(),
            username: None,
            has_password: true,
            has_scram: false,
            cert_identity: None,
            enabled: true,
            created_at: 0,
            labels: std::collections::BTreeMap::new(),
            limits: tern_broker::store::DeviceLimits::default(),
        };
        let t = device_table(&[d]);
        assert_eq!(
            t,
            "CLIENT_ID  USERNAME  ENABLED  PASSWORD  SCRAM  CERT_IDENTITY\nsensor-1   -         yes      yes       no     -\n"
        );
    }
}
