//! `sync-agent` binary: parse the command line, set up logging, dispatch.

use clap::Parser as _;

/// mimalloc rather than glibc's malloc: the agent allocates many small
/// short-lived values (frames, messages, rollout steps), where glibc spent
/// a tenth of the center's time (measured with perf under `xtask bench
/// center`) and fragments over days. Wrapped so that large fresh blocks
/// start out not resident (`memory::Allocator`).
#[global_allocator]
static ALLOCATOR: sync_agent::memory::Allocator = sync_agent::memory::Allocator;

use sync_agent::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.command {
        Command::Run { log, .. } => log.clone(),
        _ => "warn".to_string(),
    };
    // `init` also forwards the `log` crate's records (netlink, aya).
    tracing_subscriber::util::SubscriberInitExt::init(sync_agent::logging::subscriber(
        &filter,
        std::io::stderr,
    ));
    if let Err(e) = sync_agent::memory::no_transparent_huge_pages() {
        tracing::warn!("transparent huge pages stay on for this process: {e}");
    }
    sync_agent::memory::return_freed_memory_at_once();
    match sync_agent::cli::dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sync-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
