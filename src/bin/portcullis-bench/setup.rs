//! The in-process Portcullis under test: its configuration, its copy of the
//! policy directory with roomy quotas, and policy reloads under load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::authn::config::IssuerConfig;
use portcullis::config::Config;

use crate::report::Reload;
use crate::token::{TokenKey, AUDIENCE, ISSUER};
use crate::Args;

pub fn portcullis_config(
    args: &Args,
    keys: &TokenKey,
    dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let jwks_file = dir.join("bench.jwks.json");
    std::fs::write(&jwks_file, keys.jwks.to_string())?;
    let policies = if args.keep_quotas {
        args.policies.clone()
    } else {
        roomy_copy(&args.policies, &dir.join("policies"))?
    };
    if let Some(n) = args.reload_policies {
        anyhow::ensure!(
            !args.keep_quotas,
            "--reload-policies writes into a copy of the policy directory: drop --keep-quotas"
        );
        std::fs::write(policies.join("scaled.cedar"), scaled_policies(n, 0))?;
    }
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        policies,
        ..Config::default()
    };
    config.reload.watch = false;
    // The audit trail is on, as in production, in this run's directory.
    config.audit.directory = dir.join("audit");
    let issuer: IssuerConfig = serde_json::from_value(serde_json::json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks_file": jwks_file,
        "algorithms": ["ES256"],
        "org_claim": "org",
    }))?;
    config.authentication.jwt.push(issuer);
    if let Some(url) = &args.redis {
        config.quotas.store = portcullis::quota::QuotaStoreKind::Redis;
        config.quotas.redis_url = Some(url.clone());
        // A store error must show up as a denial, not as a silent
        // in-process fallback that would flatter the figures.
        config.quotas.on_store_error = portcullis::quota::OnStoreError::Deny;
    }
    Ok(config)
}

/// `n` policies that never apply to the benchmark's requests (each names
/// its own principal), tagged with `generation` so each write is a change.
fn scaled_policies(n: usize, generation: u32) -> String {
    let mut text = String::with_capacity(n * 160);
    for i in 0..n {
        text.push_str(&format!(
            "@id(\"bench-g{generation}-p{i}\")\npermit (principal == User::\"bench-u{i}\", action == Action::\"invoke\", resource is ModelVersion) when {{ principal in resource.model.owner }};\n"
        ));
    }
    text
}

/// Rewrites the policy file and reloads, once per second, for `seconds`.
pub async fn reload_under_load(
    store: Arc<portcullis::policy::PolicyStore>,
    file: PathBuf,
    n: usize,
    seconds: f64,
) -> anyhow::Result<Vec<Reload>> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut generation = 1;
    // Bounded: at most one reload per second of the run, and 600 at most.
    while Instant::now() + Duration::from_secs(1) < end && generation <= 600 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::fs::write(&file, scaled_policies(n, generation)).await?;
        let started = Instant::now();
        let result = store.reload_async().await;
        out.push(Reload {
            policies: n,
            milliseconds: started.elapsed().as_secs_f64() * 1e3,
            ok: result.is_ok(),
        });
        generation += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(out)
}

/// A copy of the policy directory's files with every quota scaled up a
/// million times (see `--keep-quotas`).
pub fn roomy_copy(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(to.join("quotas"))?;
    for sub in ["", "quotas", "shadow", "schemas"] {
        let Ok(entries) = std::fs::read_dir(from.join(sub)) else {
            continue;
        };
        std::fs::create_dir_all(to.join(sub))?;
        for entry in entries {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            let target = to.join(sub).join(path.file_name().expect("a file name"));
            let is_quota = sub == "quotas" || path.file_name().is_some_and(|n| n == "quotas.yaml");
            if is_quota {
                let text = std::fs::read_to_string(&path)?;
                std::fs::write(&target, portcullis::quota::config::scaled(&text, 1_000_000))?;
            } else {
                std::fs::copy(&path, &target)?;
            }
        }
    }
    Ok(to.to_path_buf())
}
