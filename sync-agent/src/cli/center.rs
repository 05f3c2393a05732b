//! `sync-agent config …`: the config center's client side, over its HTTP
//! API (SPEC 6.1), and the text rendering of its answers.

use anyhow::Context as _;

use super::{ConfigAction, TokenAction};

/// Runs one `config` action against the center at `center`, sending
/// `token` and trusting `ca_file` for HTTPS when given.
pub(super) async fn run(
    center: &str,
    token: Option<&str>,
    ca_file: Option<&std::path::Path>,
    action: ConfigAction,
    json: bool,
) -> anyhow::Result<()> {
    use crate::rollout::{client::CenterClient, wire::ConfigKey};
    if let ConfigAction::Token { action } = action {
        return token_action(action, json);
    }
    let client = CenterClient::with_auth(center, token, ca_file)?;
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
            canary,
            approve_each_batch,
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
            if let Some(c) = canary {
                query.push(format!("canary={c}"));
            }
            if approve_each_batch {
                query.push("approve_each_batch=true".into());
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
        ConfigAction::Delete { key: k } => {
            client
                .delete(&client.key_url(&key(&k)?, ""), &format!("delete {k}"))
                .await?
        }
        ConfigAction::Audit { after, limit } => {
            let value = client
                .get(
                    &client.url(&format!("audit?after={after}&limit={limit}")),
                    "audit",
                )
                .await?;
            if !json {
                for e in value.as_array().into_iter().flatten() {
                    println!(
                        "{} {} {} {} {} v{} md5 {}{}{}",
                        e["seq"],
                        e["time_ms"],
                        e["identity"].as_str().unwrap_or(""),
                        e["action"].as_str().unwrap_or(""),
                        e["key"].as_str().unwrap_or(""),
                        e["version"],
                        e["md5"].as_str().unwrap_or(""),
                        e["rollout"]
                            .as_u64()
                            .map(|id| format!(" rollout {id}"))
                            .unwrap_or_default(),
                        e["device"]
                            .as_str()
                            .map(|d| format!(" device {d}"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            value
        }
        ConfigAction::Resume { id } => {
            client
                .post(
                    &client.url(&format!("rollouts/{id}/resume")),
                    &serde_json::json!({}),
                    "resume",
                )
                .await?
        }
        ConfigAction::Continue { id } => {
            client
                .post(
                    &client.url(&format!("rollouts/{id}/continue")),
                    &serde_json::json!({}),
                    &format!("continue rollout {id}"),
                )
                .await?
        }
        ConfigAction::Abort { id } => {
            client
                .post(
                    &client.url(&format!("rollouts/{id}/abort")),
                    &serde_json::json!({}),
                    &format!("abort rollout {id}"),
                )
                .await?
        }
        ConfigAction::Skip { id, device } => {
            crate::rollout::wire::check_name("device", &device).map_err(anyhow::Error::msg)?;
            client
                .post(
                    &client.url(&format!("rollouts/{id}/skip/{device}")),
                    &serde_json::json!({}),
                    &format!("skip {device} in rollout {id}"),
                )
                .await?
        }
        ConfigAction::Devices => client.get(&client.url("devices"), "devices").await?,
        ConfigAction::Stats => client.get(&client.url("stats"), "stats").await?,
        ConfigAction::RemoveDevice { device } => {
            crate::rollout::wire::check_name("device", &device).map_err(anyhow::Error::msg)?;
            client
                .delete(
                    &client.url(&format!("devices/{device}")),
                    &format!("remove device {device}"),
                )
                .await?
        }
        ConfigAction::Token { .. } => unreachable!("handled above"),
        ConfigAction::Listeners { key: k } => {
            client
                .get(
                    &client.key_url(&key(&k)?, "/listeners"),
                    &format!("listeners of {k}"),
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

/// `config token new`: a fresh token, printed once with its config entry.
fn token_action(action: TokenAction, json: bool) -> anyhow::Result<()> {
    use crate::rollout::center::auth::{self, TokenConfig, Tokens};
    let TokenAction::New {
        name,
        roles,
        device,
    } = action;
    let token = auth::mint();
    let entry = TokenConfig {
        name,
        sha256: hex::encode(auth::hash_token(&token)),
        roles,
        device,
    };
    let mut problems = crate::validate::Problems::default();
    Tokens::from_config(std::slice::from_ref(&entry), &mut problems);
    let problems: Vec<String> = problems.into_vec().into_iter().map(|p| p.message).collect();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    let config = format!(
        "[[rollout.center.tokens]]\n{}",
        toml::to_string(&entry).context("writing the token entry")?
    );
    if json {
        let mut value = serde_json::to_value(&entry)?;
        value["token"] = token.into();
        value["config"] = config.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let holder = if entry.device.is_some() {
            "put it in the device's token_file (mode 0600)"
        } else {
            "its holder passes it with MLAG_SYNC_TOKEN or --token"
        };
        println!("token for {:?}, shown only now ({holder}):", entry.name);
        println!("{token}");
        println!();
        println!("add to the center's config (then restart the center):");
        print!("{config}");
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
            if items
                .first()
                .is_some_and(|i| i["md5"].is_string() && i["device"].is_string()) =>
        {
            for l in items {
                println!(
                    "{} {} v{} md5 {}{}",
                    l["device"].as_str().unwrap_or(""),
                    l["service"].as_str().unwrap_or(""),
                    l["version"]
                        .as_u64()
                        .map_or("-".to_string(), |v| v.to_string()),
                    l["md5"].as_str().filter(|m| !m.is_empty()).unwrap_or("-"),
                    if l["lost"] == true { " (lost)" } else { "" }
                );
            }
        }
        serde_json::Value::Array(items)
            if items.first().is_some_and(|i| i["registered_ms"].is_u64()) =>
        {
            for d in items {
                let services: Vec<&str> = d["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["name"].as_str())
                    .collect();
                println!(
                    "{} services {} labels [{}] seen_ms {}{}",
                    d["device"].as_str().unwrap_or(""),
                    services.join(","),
                    d["labels"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    d["seen_ms"],
                    if d["lost"] == true { " LOST" } else { "" }
                );
            }
        }
        v if v["batches"].is_array() => {
            print_config_answer(&serde_json::Value::Array(vec![v.clone()]))
        }
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
