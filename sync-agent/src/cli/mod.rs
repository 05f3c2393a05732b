//! Command line (SPEC 7.2). `run` starts the agent; every other command asks
//! a running agent over its control socket. `-j` prints one JSON document.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod center;

use crate::{
    config::Config,
    control::{client, protocol::Request},
    dataplane::report::{CapturedList, CountersReport, StatusReport},
    fabric::report::FabricReport,
    inference::report::{AlarmsReport, StateReport, StatesReport},
    mclag::report::MclagReport,
    peersync::report::{ArpTable, PeerReport},
    rollout::report::RolloutReport,
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
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Token for a center with tokens configured (`config token new`
        /// mints one); prefer the environment variable to keep it out of
        /// the process list.
        #[arg(long, global = true, env = "MLAG_SYNC_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM file of the CA that signed an https:// center's certificate
        /// (default: the system's roots).
        #[arg(long, global = true, env = "MLAG_SYNC_CA_FILE")]
        ca_file: Option<PathBuf>,
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
    /// Write the man pages (one per command) and the bash, zsh and fish
    /// completions into DIR, generated from this command line so they
    /// cannot drift from `--help` (for packaging: `cargo xtask deb`).
    #[command(hide = true)]
    Docs {
        /// Directory to write `man/` and `completions/` into (created).
        dir: PathBuf,
    },
}

/// Writes the man pages and shell completions of this command line (see
/// [`Command::Docs`]).
pub fn write_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for out in [&man, &completions] {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "sync-agent", &completions)
            .with_context(|| {
                format!("writing {shell} completions into {}", completions.display())
            })?;
    }
    Ok(())
}

/// `fabric` actions.
#[derive(Debug, Subcommand)]
pub enum FabricAction {
    /// Publish a fabric-wide setting; every member applies it and acknowledges
    /// (see `show fabric`). Answers once settled: applied, superseded,
    /// rejected or timed out (fabric.set_timeout_ms), with who acknowledged.
    /// Settings: heartbeat_interval_ms (100-60000), dead_after_ms
    /// (300-600000), site.<name> (free text, up to 256 bytes).
    Set {
        /// Setting name, e.g. `site.ntp` or `heartbeat_interval_ms`.
        key: String,
        /// New value.
        value: String,
    },
    /// Print this switch's fabric public key (for `[fabric.trust.roster]`),
    /// creating its key file (`fabric.trust.key_file`, mode 0600) if missing.
    /// Reads the config file; needs no running agent.
    Key {
        /// TOML config file with a `[fabric]` section.
        #[arg(short, long)]
        config: PathBuf,
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
        /// Devices (names, or labels they registered with) updated first,
        /// alone in the first batch: `--canary dev1,dev2`.
        #[arg(long, value_name = "DEVICE[,...]")]
        canary: Option<String>,
        /// Pause after every batch until `config continue ID`.
        #[arg(long)]
        approve_each_batch: bool,
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
    /// Delete a config; its history is kept in the audit log.
    Delete {
        /// namespace/group/name.
        key: String,
    },
    /// The audit log: who changed which config when, oldest first.
    Audit {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Retry the failed steps of a paused rollout.
    Resume {
        /// Rollout id.
        id: u64,
    },
    /// Continue a paused rollout: after an approval pause the next batch is
    /// released; after a failure the failed steps are retried.
    Continue {
        /// Rollout id.
        id: u64,
    },
    /// End a rollout where it is; released steps of its batch go back to
    /// what they had.
    Abort {
        /// Rollout id.
        id: u64,
    },
    /// Give up on one device in a rollout (e.g. a lost one): its unfinished
    /// steps are skipped and the rollout goes on.
    Skip {
        /// Rollout id.
        id: u64,
        /// Device name.
        device: String,
    },
    /// Registered devices: services, labels, last heard from, lost or not,
    /// confirmed versions.
    Devices,
    /// The center's counters: requests refused by reason (invalid,
    /// not_found, conflict, too_large, ...) and long polls held.
    Stats,
    /// Forget a registered device (decommissioned); its unfinished steps
    /// are skipped.
    RemoveDevice {
        /// Device name.
        device: String,
    },
    /// Who uses a config: each device's service with the version and MD5 it
    /// confirmed running.
    Listeners {
        /// namespace/group/name.
        key: String,
    },
    /// Tokens for a center's `[[rollout.center.tokens]]` (needs no center).
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
}

/// `config token` actions.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Mint a token: prints the secret once (give it to its holder) and the
    /// `[[rollout.center.tokens]]` entry with its SHA-256 for the center's
    /// config.
    New {
        /// Who holds it; recorded as the author of its writes.
        #[arg(long)]
        name: String,
        /// An operator role NAMESPACE:ROLE, ROLE one of read, publish (includes
        /// read), admin (includes both); namespace `*`: all. Repeatable.
        #[arg(
            long = "role",
            required_unless_present = "device",
            conflicts_with = "device"
        )]
        roles: Vec<String>,
        /// Make a device token for this device instead (it may only
        /// register, poll and acknowledge as that device).
        #[arg(long)]
        device: Option<String>,
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
    /// Synced IPv6 neighbours (Neighbour Advertisements), as `show arp`.
    Nd,
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
    /// Root-cause alarms: each raised alarm with its root causes and the objects suppressed
    /// under it, recently cleared alarms, counters (and the webhook's).
    Alarms,
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
        ($request:expr, $report:ty) => {
            query::<$report>(&cli.socket, &cli.instance, cli.json, $request).await
        };
    }
    match cli.command {
        Command::Run { config, .. } => crate::agent::run(&config, cli.socket).await,
        Command::Docs { dir } => write_docs(&dir),
        Command::CheckConfig { config } => {
            let parsed = Config::load(&config)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&parsed)?);
            } else {
                println!(
                    "{}: ok (instance {}, {} member port(s), roles {})",
                    config.display(),
                    parsed.instance,
                    parsed.member_ports().len(),
                    parsed.roles().join(" ")
                );
            }
            Ok(())
        }
        Command::Show { what: Show::Peer } => {
            ask!(Request::Peer, PeerReport)
        }
        Command::Show {
            what: Show::States { faulty },
        } => {
            ask!(Request::States { faulty }, StatesReport)
        }
        Command::Show {
            what: Show::State { object },
        } => {
            ask!(Request::State { object }, StateReport)
        }
        Command::Show { what: Show::Alarms } => {
            ask!(Request::Alarms, AlarmsReport)
        }
        Command::Show {
            what: Show::Rollout,
        } => {
            ask!(Request::Rollout, RolloutReport)
        }
        Command::Config {
            center,
            token,
            ca_file,
            action,
        } => {
            center::run(
                &center,
                token.as_deref(),
                ca_file.as_deref(),
                action,
                cli.json,
            )
            .await
        }
        Command::Show { what: Show::Fabric } => {
            ask!(Request::Fabric, FabricReport)
        }
        Command::Fabric {
            action: FabricAction::Set { ref key, ref value },
        } => {
            let request = Request::FabricSet {
                key: key.clone(),
                value: value.clone(),
            };
            ask!(request, Json)
        }
        Command::Fabric {
            action: FabricAction::Key { ref config },
        } => fabric_key(config, cli.json),
        Command::Show { what: Show::Mclag } => {
            ask!(Request::Mclag, MclagReport)
        }
        Command::Show { what: Show::Arp } => {
            ask!(Request::Arp, ArpTable)
        }
        Command::Show { what: Show::Nd } => {
            ask!(Request::Nd, ArpTable)
        }
        Command::Status => {
            ask!(Request::Status, StatusReport)
        }
        Command::Reload => {
            ask!(Request::Reload, StatusReport)
        }
        Command::Show {
            what: Show::Counters,
        } => {
            ask!(Request::Counters, CountersReport)
        }
        Command::Show {
            what: Show::Captured { limit },
        } => {
            ask!(Request::Captured { limit: Some(limit) }, CapturedList)
        }
    }
}

/// `fabric key`: the roster line for this switch.
fn fabric_key(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    // Only [fabric] and the instance matter here: a roster still being
    // written must not stop the key from being printed.
    let raw: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let fabric = raw
        .get("fabric")
        .cloned()
        .with_context(|| format!("{}: no [fabric] section", path.display()))?;
    let fabric: crate::fabric::config::FabricConfig = fabric
        .try_into()
        .with_context(|| format!("{}: [fabric]", path.display()))?;
    let name = match (
        &fabric.identity,
        raw.get("instance").and_then(|v| v.as_str()),
    ) {
        (Some(name), _) => name.clone(),
        (None, Some(instance)) => instance.to_string(),
        (None, None) => anyhow::bail!("{}: neither fabric.identity nor instance", path.display()),
    };
    let identity =
        crate::fabric::identity::Identity::load_or_create(&name, &fabric.trust.key_file)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "identity": name,
                "public_key": identity.public_hex(),
                "key_file": fabric.trust.key_file,
            })
        );
    } else {
        println!("{name} = {{ public_key = \"{}\" }}", identity.public_hex());
    }
    Ok(())
}

/// An answer printed as JSON whether or not `-j` was given (e.g. the
/// change `fabric set` published).
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Json(serde_json::Value);

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string_pretty(&self.0).map_err(|_| std::fmt::Error)?;
        writeln!(f, "{text}")
    }
}

/// Asks the agent; prints the answer as JSON, or as the report's text.
async fn query<T: serde::de::DeserializeOwned + std::fmt::Display>(
    socket: &Option<PathBuf>,
    instance: &Option<String>,
    json: bool,
    request: Request,
) -> anyhow::Result<()> {
    let socket = client::resolve_socket(socket.as_deref(), instance.as_deref())?;
    let data = client::request(&socket, &request).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        let report: T = serde_json::from_value(data).context("unexpected answer from the agent")?;
        print!("{report}");
    }
    Ok(())
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
    fn token_new_takes_roles_or_a_device_not_both() {
        let cli = Cli::try_parse_from([
            "sync-agent",
            "config",
            "token",
            "new",
            "--name",
            "ops",
            "--role",
            "prod:publish",
            "--role",
            "*:read",
        ])
        .unwrap();
        let Command::Config {
            action:
                ConfigAction::Token {
                    action: TokenAction::New { roles, device, .. },
                },
            ..
        } = cli.command
        else {
            panic!("not token new: {:?}", cli.command);
        };
        assert_eq!((roles.len(), device), (2, None));
        for bad in [
            &["sync-agent", "config", "token", "new", "--name", "x"][..],
            &[
                "sync-agent",
                "config",
                "token",
                "new",
                "--name",
                "x",
                "--device",
                "sw1",
                "--role",
                "a:read",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
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
