//! Command line (SPEC 7.2). `run` starts the agent; every other command asks
//! a running agent over its control socket. `-j` prints one JSON document.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    config::Config,
    control::{
        client,
        protocol::{CapturedEntry, CountersReport, Request, StatusReport},
    },
    fabric::FabricReport,
    inference::{
        StateView,
        task::{StateReport, StatesReport},
    },
    mclag::MclagReport,
    peersync::report::{ArpReportEntry, ArpTable, PeerReport},
};

/// mlag-sync agent: keeps an MLAG switch pair's ARP tables in sync.
///
/// `sync-agent run --config FILE` attaches the XDP classifier to the member
/// ports named in FILE and serves a control socket; the other commands query
/// that running agent (choose it with --instance or --socket when several run).
#[derive(Debug, Parser)]
#[command(name = "sync-agent", version)]
pub struct Cli {
    /// Control socket of the agent to talk to (default: derived from the instance name).
    #[arg(short = 's', long, global = true, env = "MLAG_SYNC_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Instance name of the agent to query (its socket is /run/mlag-sync/NAME.sock).
    #[arg(short = 'i', long, global = true)]
    pub instance: Option<String>,
    /// Print JSON (one document) instead of text.
    #[arg(short = 'j', long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground until SIGINT/SIGTERM (SIGHUP reloads the config).
    Run {
        /// TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Log filter (tracing env-filter syntax), e.g. `info` or `sync_agent=debug`.
        #[arg(
            long,
            env = "MLAG_SYNC_LOG",
            default_value = "info,netlink_packet_route=error"
        )]
        log: String,
    },
    /// Check a config file and print every problem found.
    CheckConfig {
        /// TOML config file.
        config: PathBuf,
    },
    /// Agent state: ports and how the classifier is attached, MAC tables, program ids.
    Status,
    /// Ask the agent to re-read its config file and apply the changes.
    Reload,
    /// The config center (SPEC 6): store, history, rollback and rollouts, over its HTTP API.
    Config {
        /// The center's base URL.
        #[arg(
            long,
            global = true,
            env = "MLAG_SYNC_CENTER",
            default_value = "http://127.0.0.1:7480"
        )]
        center: String,
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show one kind of state.
    Show {
        /// What to show.
        #[command(subcommand)]
        what: Show,
    },
    /// Fabric sync (SPEC 4): fabric-wide settings.
    Fabric {
        /// What to do.
        #[command(subcommand)]
        action: FabricAction,
    },
}

/// `fabric` actions.
#[derive(Debug, Subcommand)]
pub enum FabricAction {
    /// Publish a fabric-wide setting; every member applies it and acknowledges
    /// (see `show fabric`). Settings: heartbeat_interval_ms (100-60000),
    /// dead_after_ms (300-600000), site.<name> (free text, up to 256 bytes).
    Set {
        /// Setting name, e.g. `site.ntp` or `heartbeat_interval_ms`.
        key: String,
        /// New value.
        value: String,
    },
}

/// `config` actions. KEY is `namespace/group/name`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Add or change a config (a new version; rolled out to the devices that use it).
    Put {
        /// namespace/group/name.
        key: String,
        /// text | json | yaml | toml | properties (structured formats are validated).
        #[arg(long, default_value = "text")]
        format: String,
        /// The content.
        #[arg(long, conflicts_with = "file")]
        content: Option<String>,
        /// Read the content from a file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Most steps per rollout batch, for this change.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Delay between batches (ms), for this change.
        #[arg(long)]
        pace_ms: Option<u64>,
    },
    /// Show a config (the current version, or `--version N`).
    Get {
        /// namespace/group/name.
        key: String,
        /// A historical version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// List configs.
    List {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Every version of a config, oldest first.
    History {
        /// namespace/group/name.
        key: String,
    },
    /// Make version N's content the new version.
    Rollback {
        /// namespace/group/name.
        key: String,
        /// The version whose content to restore.
        #[arg(long)]
        version: u64,
    },
    /// Copy a config to another namespace/group.
    Clone {
        /// namespace/group/name.
        key: String,
        /// Target namespace.
        #[arg(long)]
        to_namespace: String,
        /// Target group.
        #[arg(long)]
        to_group: String,
    },
    /// Unified diff between two versions.
    Diff {
        /// namespace/group/name.
        key: String,
        /// Older version.
        #[arg(long)]
        from: u64,
        /// Newer version.
        #[arg(long)]
        to: u64,
    },
    /// Rollouts, newest first: plan, batches, per-device state.
    Rollouts,
    /// Retry the failed steps of a paused rollout.
    Resume {
        /// Rollout id.
        id: u64,
    },
}

/// `show` targets.
#[derive(Debug, Subcommand)]
pub enum Show {
    /// Classifier counters (summed over CPUs) and the agent's own.
    Counters,
    /// The MLAG peer session: state, versions, last hello, counters.
    Peer,
    /// Synced ARP entries: sent to the peer and learnt from it (with the kernel's state).
    Arp,
    /// MC-LAG: role, addresses, shared MAC, per port original/current MAC and link-local.
    Mclag,
    /// Fabric: role, broker, members (identity, role, model, version, last heartbeat, state),
    /// servers, recent faults and announcements, fabric config with who changed what when.
    Fabric,
    /// Inferred object states: id, layer, kind, actual, logical, effective, fault level, since.
    States {
        /// Only objects with a fault (or in lost contact).
        #[arg(long)]
        faulty: bool,
    },
    /// Rollout: the center's rollouts (plan, batches, per-device state) and this device's services.
    Rollout,
    /// One object: its states, what it depends on and what depends on it, its histories.
    State {
        /// Object id, e.g. `ip:eth0` (see `show states`).
        object: String,
    },
    /// Most recent ARP replies captured for the peer, newest first.
    Captured {
        /// At most this many.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // Every query command: ask the agent, print JSON or text.
    macro_rules! ask {
        ($request:expr, $print:expr) => {
            query(&cli.socket, &cli.instance, cli.json, $request, $print).await
        };
    }
    match cli.command {
        Command::Run { config, .. } => crate::agent::run(&config, cli.socket).await,
        Command::CheckConfig { config } => {
            let parsed = Config::load(&config)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&parsed)?);
            } else {
                println!(
                    "{}: ok (instance {}, {} member port(s))",
                    config.display(),
                    parsed.instance,
                    parsed.dataplane.member_ports.len()
                );
            }
            Ok(())
        }
        Command::Show { what: Show::Peer } => {
            ask!(Request::Peer, print_peer)
        }
        Command::Show {
            what: Show::States { faulty },
        } => {
            ask!(Request::States { faulty }, print_states)
        }
        Command::Show {
            what: Show::State { object },
        } => {
            ask!(Request::State { object }, print_state)
        }
        Command::Show {
            what: Show::Rollout,
        } => {
            ask!(Request::Rollout, print_json)
        }
        Command::Config { center, action } => config_command(&center, action, cli.json).await,
        Command::Show { what: Show::Fabric } => {
            ask!(Request::Fabric, print_fabric)
        }
        Command::Fabric {
            action: FabricAction::Set { ref key, ref value },
        } => {
            let request = Request::FabricSet {
                key: key.clone(),
                value: value.clone(),
            };
            ask!(request, print_json)
        }
        Command::Show { what: Show::Mclag } => {
            ask!(Request::Mclag, print_mclag)
        }
        Command::Show { what: Show::Arp } => {
            ask!(Request::Arp, print_arp)
        }
        Command::Status => {
            ask!(Request::Status, print_status)
        }
        Command::Reload => {
            ask!(Request::Reload, print_status)
        }
        Command::Show {
            what: Show::Counters,
        } => {
            ask!(Request::Counters, print_counters)
        }
        Command::Show {
            what: Show::Captured { limit },
        } => {
            ask!(Request::Captured { limit: Some(limit) }, print_captured)
        }
    }
}

async fn query<T: serde::de::DeserializeOwned>(
    socket: &Option<PathBuf>,
    instance: &Option<String>,
    json: bool,
    request: Request,
    print: fn(&T),
) -> anyhow::Result<()> {
    let socket = client::resolve_socket(socket.as_deref(), instance.as_deref())?;
    let data = client::request(&socket, &request).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        let report: T = serde_json::from_value(data).context("unexpected answer from the agent")?;
        print(&report);
    }
    Ok(())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_status(s: &StatusReport) {
    println!(
        "instance {} (pid {}, version {}, up {}s)",
        s.instance, s.pid, s.version, s.uptime_s
    );
    println!("config   {}", s.config_file);
    println!(
        "programs mlag_classify id {}  mlag_pass id {}",
        or_dash(s.program_id),
        or_dash(s.pass_program_id)
    );
    println!(
        "policy   sync_own_replies={} vrrp_prefix_is_shared={}",
        s.sync_own_replies, s.vrrp_prefix_is_shared
    );
    println!(
        "{:<16} {:>7} {:<17} {:<5} {:<8} problem",
        "port", "ifindex", "mac", "up", "xdp"
    );
    for p in &s.ports {
        let mode = p.xdp_mode.map(|m| format!("{m:?}").to_lowercase());
        println!(
            "{:<16} {:>7} {:<17} {:<5} {:<8} {}",
            p.name,
            or_dash(p.ifindex),
            or_dash(p.mac),
            p.up,
            or_dash(mode),
            p.problem.as_deref().unwrap_or("")
        );
    }
    let list = |macs: &[crate::mac::MacAddr]| {
        macs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("peer macs   {}", list(&s.peer_macs));
    println!("own macs    {}", list(&s.own_macs));
    println!("shared macs {}", list(&s.shared_macs));
}

fn print_counters(c: &CountersReport) {
    let rows = [
        ("seen", c.seen),
        ("arp_replies", c.arp_replies),
        ("peer", c.peer),
        ("own", c.own),
        ("shared", c.shared),
        ("unmatched", c.unmatched),
        ("malformed", c.malformed),
        ("captured", c.captured),
        ("ringbuf_full", c.ringbuf_full),
    ];
    println!("kernel (mlag_counters, all CPUs)");
    for (name, value) in rows {
        println!("  {name:<16} {value}");
    }
    println!("agent");
    let a = &c.agent;
    for (name, value) in [
        ("records_read", a.records_read),
        ("replies_received", a.replies_received),
        ("invalid_records", a.invalid_records),
        ("bad_requests", a.bad_requests),
    ] {
        println!("  {name:<16} {value}");
    }
}

fn print_captured(entries: &Vec<CapturedEntry>) {
    if entries.is_empty() {
        println!("no replies captured yet");
        return;
    }
    println!(
        "{:<12} {:<6} {:<9} {:<15} {:<17} {:<15} {:<17} {:>8}",
        "port", "class", "vlans", "sender ip", "sender mac", "target ip", "target mac", "age"
    );
    for e in entries {
        let vlans = match e.vlan_count {
            0 => "-".to_string(),
            1 => e.outer_vlan.to_string(),
            _ => format!("{}/{}", e.outer_vlan, e.inner_vlan),
        };
        println!(
            "{:<12} {:<6} {:<9} {:<15} {:<17} {:<15} {:<17} {:>6}ms",
            e.port, e.class, vlans, e.sender_ip, e.sender_mac, e.target_ip, e.target_mac, e.age_ms
        );
    }
}

fn print_peer(p: &PeerReport) {
    print!("{p}");
}

// `query` hands the printer `&T` with `T = Vec<_>`, the type the JSON holds.
#[allow(clippy::ptr_arg)]
fn print_arp(entries: &Vec<ArpReportEntry>) {
    print!("{}", ArpTable(entries));
}

fn print_fabric(f: &FabricReport) {
    println!(
        "{} role {:?}{}  broker {} ({})  encryption {}{}",
        f.identity,
        f.role,
        match (f.rank, f.active) {
            (Some(rank), Some(active)) => format!(
                " ({} server, {})",
                if rank == 0 { "primary" } else { "backup" },
                if active { "active" } else { "standby" }
            ),
            _ => String::new(),
        },
        f.broker,
        if f.connected {
            "connected"
        } else {
            "not connected"
        },
        f.encryption,
        if f.tls { " + tls" } else { "" }
    );
    println!("role: {}", f.role_reason);
    println!(
        "{:<20} {:<7} {:<16} {:<10} {:>10} {:<9}",
        "member", "role", "model", "version", "heard ms", "state"
    );
    for m in &f.members {
        println!(
            "{:<20} {:<7} {:<16} {:<10} {:>10} {:<9}",
            m.identity,
            format!("{:?}", m.role).to_lowercase(),
            m.model,
            m.version,
            m.last_heartbeat_ms_ago
                .map_or("-".into(), |v| v.to_string()),
            m.state
        );
    }
    for s in &f.servers {
        println!(
            "server {} rank {} {} (status {} ms ago)",
            s.server,
            s.rank,
            if s.active { "active" } else { "standby" },
            s.last_status_ms_ago
        );
    }
    if !f.config.is_empty() {
        println!("fabric config:");
        for c in &f.config {
            println!(
                "  {} = {}  (by {} at unix ms {}, acks {})",
                c.key,
                c.value,
                c.changed_by,
                c.changed_at_ms,
                c.acks.len()
            );
        }
    }
    for p in &f.pending_changes {
        println!(
            "pending change {} = {}: waiting for {}",
            p.change.key,
            p.change.value,
            p.waiting_for.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if !f.faults.is_empty() {
        println!("recent faults:");
        for x in f.faults.iter().rev().take(10) {
            println!(
                "  {} {} {} (unix ms {})",
                x.fault.member, x.fault.port, x.fault.kind, x.fault.at_ms
            );
        }
    }
    println!(
        "counters: {}",
        f.counters
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn print_mclag(m: &MclagReport) {
    println!(
        "role {:?}  own {}  peer {} ({})  shared mac {}",
        m.role,
        m.own_address,
        m.peer_address.as_deref().unwrap_or("-"),
        if m.peer_alive { "alive" } else { "not alive" },
        or_dash(m.shared_mac)
    );
    if m.backup_configured {
        println!(
            "backup path: {}  split brain: {}",
            match m.backup_alive {
                Some(true) => "alive",
                Some(false) => "silent",
                None => "unknown",
            },
            m.split_brain
        );
    }
    if let Some(error) = &m.error {
        println!("error: {error}");
    }
    println!(
        "role changes {} (last at unix ms {}), announcements sent {}",
        m.role_changes,
        or_dash(m.last_role_change_unix_ms),
        m.announcements_sent
    );
    println!(
        "{:<16} {:>5} {:<17} {:<17} {:<17} link-local",
        "port", "mlag", "original mac", "current mac", "twin mac"
    );
    for p in &m.ports {
        println!(
            "{:<16} {:>5} {:<17} {:<17} {:<17} {}",
            p.name,
            p.mlag_id,
            or_dash(p.original_mac),
            or_dash(p.current_mac),
            or_dash(p.twin_mac),
            p.link_local.join(" ")
        );
    }
}

fn states_text(states: &[StateView]) -> String {
    if states.is_empty() {
        return "-".into();
    }
    states
        .iter()
        .map(|s| format!("{}({})", s.name, s.level))
        .collect::<Vec<_>>()
        .join(",")
}

fn print_states(r: &StatesReport) {
    println!(
        "{:<28} {:<8} {:<13} {:<18} {:<22} {:<18} {:>5}",
        "object", "layer", "kind", "actual", "logical", "effective", "level"
    );
    for o in &r.objects {
        println!(
            "{:<28} {:<8} {:<13} {:<18} {:<22} {:<18} {:>5}",
            o.id.0,
            format!("{:?}", o.layer).to_lowercase(),
            o.kind,
            states_text(&o.actual),
            states_text(&o.logical),
            states_text(&o.effective),
            o.fault_level
        );
    }
    let c = &r.counters;
    println!(
        "({} objects; {} infos, {} unknown, {} about unknown objects, {} changes)",
        r.objects.len(),
        c.infos,
        c.unknown_infos,
        c.unknown_objects,
        c.changes
    );
}

fn print_state(r: &StateReport) {
    let o = &r.object;
    println!(
        "{} ({:?} {}), fault level {}",
        o.id.0, o.layer, o.kind, o.fault_level
    );
    println!("  actual    {}", states_text(&o.actual));
    println!("  logical   {}", states_text(&o.logical));
    println!("  effective {}", states_text(&o.effective));
    println!("depends on:");
    for l in &r.depends_on {
        println!(
            "  {}{} -[{:?}]-> {} (level {})",
            "  ".repeat(l.depth - 1),
            l.from.0,
            l.kind,
            l.to.0,
            l.fault_level
        );
    }
    println!("depended on by:");
    for l in &r.dependents {
        println!(
            "  {}{} <-[{:?}]- {} (level {})",
            "  ".repeat(l.depth - 1),
            l.from.0,
            l.kind,
            l.to.0,
            l.fault_level
        );
    }
    println!("information history (newest last):");
    for i in &o.info_history {
        println!(
            "  {} {} {}{}",
            i.at_ms,
            i.source,
            i.message,
            if i.known { "" } else { " (unknown)" }
        );
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

async fn config_command(center: &str, action: ConfigAction, json: bool) -> anyhow::Result<()> {
    use crate::rollout::{client::CenterClient, wire::ConfigKey};
    let client = CenterClient::new(center);
    let key = |text: &str| -> anyhow::Result<ConfigKey> {
        text.parse().map_err(|e| anyhow::anyhow!("{e}"))
    };
    let value = match action {
        ConfigAction::Put {
            key: k,
            format,
            content,
            file,
            description,
            batch_size,
            pace_ms,
        } => {
            let content = match (content, file) {
                (Some(c), _) => c,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                (None, None) => {
                    anyhow::bail!("give the content with --content TEXT or --file PATH")
                }
            };
            let body = serde_json::json!({ "format": format, "content": content, "description": description });
            let mut query = Vec::new();
            if let Some(b) = batch_size {
                query.push(format!("batch_size={b}"));
            }
            if let Some(p) = pace_ms {
                query.push(format!("pace_ms={p}"));
            }
            let suffix = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            client
                .put(
                    &client.key_url(&key(&k)?, &suffix),
                    &body,
                    &format!("put {k}"),
                )
                .await?
        }
        ConfigAction::Get { key: k, version } => {
            let suffix = version.map(|v| format!("?version={v}")).unwrap_or_default();
            client
                .get(&client.key_url(&key(&k)?, &suffix), &format!("get {k}"))
                .await?
        }
        ConfigAction::List { namespace } => {
            let suffix = namespace
                .map(|n| format!("?namespace={n}"))
                .unwrap_or_default();
            client
                .get(&client.url(&format!("configs{suffix}")), "list")
                .await?
        }
        ConfigAction::History { key: k } => {
            client
                .get(
                    &client.key_url(&key(&k)?, "/history"),
                    &format!("history of {k}"),
                )
                .await?
        }
        ConfigAction::Rollback { key: k, version } => {
            client
                .post(
                    &client.key_url(&key(&k)?, "/rollback"),
                    &serde_json::json!({ "version": version }),
                    &format!("rollback {k}"),
                )
                .await?
        }
        ConfigAction::Clone {
            key: k,
            to_namespace,
            to_group,
        } => {
            let body = serde_json::json!({ "namespace": to_namespace, "group": to_group });
            client
                .post(
                    &client.key_url(&key(&k)?, "/clone"),
                    &body,
                    &format!("clone {k}"),
                )
                .await?
        }
        ConfigAction::Diff { key: k, from, to } => {
            client
                .get(
                    &client.key_url(&key(&k)?, &format!("/diff?from={from}&to={to}")),
                    &format!("diff {k}"),
                )
                .await?
        }
        ConfigAction::Rollouts => client.get(&client.url("rollouts"), "rollouts").await?,
        ConfigAction::Resume { id } => {
            client
                .post(
                    &client.url(&format!("rollouts/{id}/resume")),
                    &serde_json::json!({}),
                    "resume",
                )
                .await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_config_answer(&value);
    }
    Ok(())
}

fn print_config_answer(value: &serde_json::Value) {
    let line = |r: &serde_json::Value| {
        format!(
            "{}/{}/{} v{} {} md5 {} {}",
            r["key"]["namespace"].as_str().unwrap_or(""),
            r["key"]["group"].as_str().unwrap_or(""),
            r["key"]["name"].as_str().unwrap_or(""),
            r["version"],
            r["format"].as_str().unwrap_or(""),
            r["md5"].as_str().unwrap_or(""),
            r["description"].as_str().unwrap_or("")
        )
    };
    match value {
        serde_json::Value::Array(items)
            if items.first().is_some_and(|i| i["batches"].is_array()) =>
        {
            for r in items {
                println!(
                    "rollout {} of v{} {}: batch {}/{} {}",
                    r["id"],
                    r["version"],
                    r["state"].as_str().unwrap_or(""),
                    r["current_batch"],
                    r["batches"].as_array().map_or(0, Vec::len),
                    r["paused_reason"].as_str().unwrap_or("")
                );
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|r| println!("{}", line(r))),
        v if v["diff"].is_string() => print!("{}", v["diff"].as_str().unwrap_or("")),
        v if v["content"].is_string() => {
            println!("{}", line(v));
            println!("{}", v["content"].as_str().unwrap_or(""));
        }
        v => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rollback_takes_a_version_number() {
        let cli = Cli::try_parse_from([
            "sync-agent",
            "config",
            "rollback",
            "a/b/c",
            "--version",
            "2",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Config {
                action: ConfigAction::Rollback { version: 2, .. },
                ..
            }
        ));
    }
}
