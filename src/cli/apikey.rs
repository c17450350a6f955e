//! `portcullis apikey`: generate API keys (printing the keys-file entry or
//! storing them in Redis) and revoke keys kept in Redis.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Generate a key: prints the key once (give it to the client) and the
    /// entry to append to the keys file (which stores only its hash) or the
    /// Redis command that stores it; with --redis, stores it in Redis.
    New {
        /// The App the key authenticates.
        #[arg(long)]
        app: String,
        /// The App's organisation.
        #[arg(long)]
        org: String,
        /// Scopes, comma-separated (e.g. models:invoke).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Expiry, seconds since the Unix epoch.
        #[arg(long)]
        expires_at: Option<u64>,
        #[command(flatten)]
        redis: RedisTarget,
    },
    /// Revoke a key kept in Redis, by its public id (the 12 hex digits
    /// after `pck_`): refused from the next request on. (Keys in a keys
    /// file are revoked by setting `revoked: true` in the file.)
    Revoke {
        /// The key's public id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        redis: RedisTarget,
    },
}

/// The Redis that holds API keys (`authentication.api_keys.redis`).
#[derive(clap::Args)]
pub struct RedisTarget {
    /// Store in (or revoke from) this Redis: redis://host:port/db.
    #[arg(long, env = "PORTCULLIS_REDIS_URL", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// Or this Redis Cluster: seed nodes, comma-separated.
    #[arg(long, env = "PORTCULLIS_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Vec<String>,
}

impl RedisTarget {
    fn connect(&self) -> anyhow::Result<Option<crate::shared_redis::SharedRedis>> {
        use crate::shared_redis::SharedRedis;
        let timeout = std::time::Duration::from_secs(5);
        Ok(match (&self.redis, self.redis_cluster.is_empty()) {
            (Some(url), _) => {
                Some(SharedRedis::single(url, timeout, "--redis").map_err(|e| anyhow::anyhow!(e))?)
            }
            (None, false) => Some(
                SharedRedis::cluster(&self.redis_cluster, timeout, "--redis-cluster")
                    .map_err(|e| anyhow::anyhow!(e))?,
            ),
            (None, true) => None,
        })
    }
}

// Parsed once per run; the size difference between variants is irrelevant.

impl ApiKeyCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            ApiKeyCommand::New {
                app,
                org,
                scopes,
                expires_at,
                redis,
            } => apikey_new(&app, &org, scopes, expires_at, &redis),
            ApiKeyCommand::Revoke { id, redis } => apikey_revoke(&id, &redis),
        }
    }
}

fn apikey_new(
    app: &str,
    org: &str,
    scopes: Vec<String>,
    expires_at: Option<u64>,
    redis: &RedisTarget,
) -> anyhow::Result<ExitCode> {
    for (what, value) in [("--app", app), ("--org", org)] {
        anyhow::ensure!(!value.trim().is_empty(), "{what} must not be empty");
    }
    let scopes: Vec<String> = scopes
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = scopes.iter().find(|s| s.contains(char::is_whitespace)) {
        anyhow::bail!("--scopes: '{bad}' contains whitespace; a scope is one word");
    }
    let new = crate::authn::apikey::generate(app, org, scopes, expires_at);
    let store = redis.connect()?;
    if let Some(redis) = store {
        let stored = redis_run(async {
            let mut con = redis.connection().await?;
            Ok(crate::authn::apikey_redis::store(&mut con, &new.stored).await?)
        })?;
        anyhow::ensure!(
            stored,
            "a key with id {} already exists in Redis; run the command again",
            new.stored.id
        );
        println!("key: {}", new.key);
        println!(
            "# stored in Redis as {} (the key itself is not stored)",
            crate::authn::apikey_redis::redis_key(&new.stored.id)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let entry = serde_json::to_string(&new.stored)?;
    println!("key: {}", new.key);
    println!("# append to the API keys file under `keys:` (the key itself is not stored):");
    println!("  - {entry}");
    println!("# or, for keys in Redis (authentication.api_keys.redis: true), run:");
    let argv: Vec<String> = crate::authn::apikey_redis::hset_command(&new.stored)
        .iter()
        .map(|a| shell_quote(a))
        .collect();
    println!("redis-cli {}", argv.join(" "));
    Ok(ExitCode::SUCCESS)
}

fn apikey_revoke(id: &str, redis: &RedisTarget) -> anyhow::Result<ExitCode> {
    let Some(redis) = redis.connect()? else {
        anyhow::bail!(
            "name the Redis that holds the keys with --redis URL or --redis-cluster URLS \
             (keys in a keys file are revoked by setting `revoked: true` in the file)"
        );
    };
    let id = id.strip_prefix("pck_").unwrap_or(id);
    anyhow::ensure!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "--id: a key id is the 12 hex digits after `pck_`"
    );
    let revoked = redis_run(async {
        let mut con = redis.connection().await?;
        Ok(crate::authn::apikey_redis::revoke(&mut con, id).await?)
    })?;
    anyhow::ensure!(revoked, "no API key with id {id} in Redis");
    println!("revoked API key {id}");
    Ok(ExitCode::SUCCESS)
}

/// Runs one Redis exchange for a CLI command, bounded in time.
fn redis_run<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), work)
                .await
                .map_err(|_| anyhow::anyhow!("Redis did not answer within 10 s"))?
        })
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
