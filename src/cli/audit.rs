//! `portcullis audit`: verify audit files offline, and query a running
//! server's trail through the admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

// Parsed once per run; the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify audit files offline: the hash chain, and checkpoint
    /// signatures with --key-file (HMAC) or --public-key (Ed25519). Names
    /// the first broken record. Also reads the OTLP/JSON files an
    /// OpenTelemetry collector's `file` exporter writes from `audit.export`,
    /// and verifies each chain (`service.instance.id`) in them.
    Verify {
        /// Audit files (audit-*.jsonl), directories holding them, or
        /// OTLP/JSON export files.
        #[arg(required = true, value_parser = super::PathTo("the path of an audit file or directory"))]
        files: Vec<PathBuf>,
        /// The HMAC key file the server signs checkpoints with.
        #[arg(long, value_parser = super::PathTo("the HMAC key file's path"))]
        key_file: Option<PathBuf>,
        /// An Ed25519 public key (PEM, `openssl pkey -pubout`) of the
        /// server's audit.signing_key_file; repeat it for each key in force
        /// across a key rotation. Verifies without any secret.
        #[arg(long, value_parser = super::PathTo("the public key file's path"))]
        public_key: Vec<PathBuf>,
    },
    /// Print the public key (SubjectPublicKeyInfo PEM) of the key that
    /// signs the checkpoints: audit.signing_key_file's, or the key in the
    /// PKCS#11 token of audit.signing_key_pkcs11 (read from the token, with
    /// the same start-up checks as `serve`). Give it to auditors for
    /// `portcullis audit verify --public-key`.
    PublicKey {
        /// The config file.
        #[arg(long, value_parser = super::PathTo("the config file's path"))]
        config: PathBuf,
    },
    /// Query a running server's audit trail (AuditService/Query) and print
    /// the records as JSON lines. The bearer token comes from the
    /// PORTCULLIS_ADMIN_TOKEN environment variable, never the command line.
    Query {
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:50052")]
        admin: std::net::SocketAddr,
        /// Principal, e.g. 'User::"alice"'.
        #[arg(long)]
        principal: Option<String>,
        /// Action, e.g. invoke or 'Action::"invoke"'.
        #[arg(long)]
        action: Option<String>,
        /// Resource, e.g. 'ModelVersion::"sentiment/v2"'.
        #[arg(long)]
        resource: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        /// A determining policy id.
        #[arg(long)]
        policy_id: Option<String>,
        /// A policy snapshot version.
        #[arg(long)]
        policy_version: Option<String>,
        /// Record kind: decision, authn_failure, policy_reload, policy_rejected, admin_call, checkpoint.
        #[arg(long)]
        kind: Option<String>,
        /// From this time on (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Only the last N seconds.
        #[arg(long)]
        within_seconds: Option<u64>,
        /// At most this many records in all.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

impl AuditCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            AuditCommand::Verify {
                files,
                key_file,
                public_key,
            } => audit_verify(&files, key_file.as_deref(), &public_key),
            AuditCommand::PublicKey { config } => audit_public_key(&config),
            AuditCommand::Query {
                admin,
                principal,
                action,
                resource,
                decision,
                policy_id,
                policy_version,
                kind,
                since,
                until,
                within_seconds,
                limit,
            } => audit_query(
                admin,
                crate::proto::QueryRequest {
                    principal: principal.unwrap_or_default(),
                    action: action.unwrap_or_default(),
                    resource: resource.unwrap_or_default(),
                    decision: decision.unwrap_or_default(),
                    policy_id: policy_id.unwrap_or_default(),
                    policy_version: policy_version.unwrap_or_default(),
                    kind: kind.unwrap_or_default(),
                    since: since.unwrap_or_default(),
                    until: until.unwrap_or_default(),
                    within_seconds: within_seconds.unwrap_or_default(),
                    limit: 0,
                    page_token: String::new(),
                },
                limit,
            ),
        }
    }
}

fn audit_public_key(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    use crate::audit::signing::{Signer, SigningKey};
    let config = crate::config::Config::load(path)?;
    let audit = &config.audit;
    let signer = match (&audit.signing_key_file, &audit.signing_key_pkcs11) {
        (Some(file), _) => Signer::File(
            SigningKey::from_file(file).map_err(|e| anyhow::anyhow!("audit.signing_key_file: {e}"))?,
        ),
        (None, Some(token)) => Signer::Token(
            crate::audit::pkcs11::TokenKey::open(token).map_err(|e| anyhow::anyhow!(e))?,
        ),
        (None, None) => anyhow::bail!(
            "{}: no audit.signing_key_file or audit.signing_key_pkcs11: checkpoints are not signed with a public key",
            path.display()
        ),
    };
    print!("{}", signer.public_key().to_pem());
    Ok(ExitCode::SUCCESS)
}

fn audit_verify(
    inputs: &[PathBuf],
    key_file: Option<&std::path::Path>,
    public_key_files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    use crate::audit::chain::CheckpointKey;
    use crate::audit::signing::PublicKey;
    let key = key_file
        .map(CheckpointKey::from_file)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let public_keys = public_key_files
        .iter()
        .map(|p| PublicKey::from_file(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--public-key {e}"))?;
    let mut files = Vec::new();
    let mut dumps = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found = crate::audit::writer::list_files(input)
                .with_context(|| format!("cannot list {}", input.display()))?;
            if found.is_empty() {
                anyhow::bail!("{}: no audit files (audit-*.jsonl) in it", input.display());
            }
            files.extend(found.into_iter().map(|(_, p)| p));
        } else if crate::audit::export::dump::is_dump(input) {
            dumps.push(input.clone());
        } else {
            files.push(input.clone());
        }
    }
    let mut ok = true;
    if !files.is_empty() {
        let v = crate::audit::query::verify_files(&files, key.as_ref(), &public_keys)
            .map_err(|e| anyhow::anyhow!(e))?;
        ok &= report("", &v, key.is_some(), !public_keys.is_empty());
    }
    if !dumps.is_empty() {
        let chains = crate::audit::export::dump::verify_dumps(&dumps, key.as_ref(), &public_keys)
            .map_err(|e| anyhow::anyhow!(e))?;
        if chains.is_empty() {
            anyhow::bail!(
                "no exported audit records (scope portcullis.audit) in the OTLP/JSON files given"
            );
        }
        for chain in chains {
            let label = format!("chain {}: ", chain.instance);
            ok &= report(
                &label,
                &chain.verification,
                key.is_some(),
                !public_keys.is_empty(),
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints one chain's verification, each line after `label`; true when it
/// verified.
fn report(
    label: &str,
    v: &crate::audit::chain::Verification,
    hmac_key: bool,
    public_keys: bool,
) -> bool {
    let range = match (v.first_seq, v.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..={b})"),
        _ => String::new(),
    };
    let checkpoints = if hmac_key || public_keys {
        let mut s = format!(
            "{} checkpoint signature(s) verified",
            v.checkpoints_verified
        );
        if v.checkpoints_unchecked > 0 {
            s.push_str(&format!(
                ", {} checkpoint(s) without a signature the given keys check",
                v.checkpoints_unchecked
            ));
        }
        s
    } else {
        format!(
            "{} checkpoint(s) not checked (give --public-key or --key-file to check their signatures)",
            v.checkpoints_unchecked
        )
    };
    match &v.broken {
        None if public_keys && v.checkpoints_verified == 0 => {
            println!(
                "{label}NOT VERIFIED: {} record(s){range} chain intact, but no checkpoint is signed by the given public key(s); {checkpoints}",
                v.records
            );
            false
        }
        None => {
            println!(
                "{label}ok: {} record(s){range} chain intact; {checkpoints}; head {}",
                v.records, v.head
            );
            if let Some(at) = &v.torn_tail {
                println!(
                    "{label}note: {}:{} is an incomplete last line, a write cut short when the process was killed (in written or synced durability its decisions were never answered); the writer cuts it off when it starts again",
                    at.file, at.line
                );
            }
            true
        }
        Some(b) => {
            println!("{label}BROKEN: {b}");
            println!(
                "{label}{} record(s){range} verified before the break; {checkpoints}",
                v.records
            );
            false
        }
    }
}

/// A thin client of `AuditService/Query`: follows pages until `limit`
/// records, prints each as one JSON line (the shape of the audit files).
fn audit_query(
    admin: std::net::SocketAddr,
    mut request: crate::proto::QueryRequest,
    limit: u64,
) -> anyhow::Result<ExitCode> {
    use crate::proto::audit_service_client::AuditServiceClient;
    let token = std::env::var("PORTCULLIS_ADMIN_TOKEN").ok();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let mut client = AuditServiceClient::connect(format!("http://{admin}"))
            .await
            .with_context(|| format!("cannot connect to the admin API at {admin}"))?;
        let mut printed = 0u64;
        while printed < limit {
            request.limit = u32::try_from((limit - printed).min(1000)).unwrap_or(1000);
            let mut call = tonic::Request::new(request.clone());
            if let Some(token) = &token {
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    anyhow::anyhow!("PORTCULLIS_ADMIN_TOKEN is not a valid header value")
                })?;
                call.metadata_mut().insert("authorization", value);
            }
            let page = client
                .query(call)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            for record in page.records {
                let record =
                    crate::adapters::admin::from_proto(record).map_err(|e| anyhow::anyhow!(e))?;
                println!("{}", serde_json::to_string(&record)?);
                printed += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        Ok(ExitCode::SUCCESS)
    })
}
