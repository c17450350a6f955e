//! Operating rules for everything in deploy/ (the image, Kubernetes,
//! Compose), checked on the files as tests/deploy.rs checks their shape:
//! several replicas share their counters; the admin listener is never on a
//! public address (it has no TLS); probes and scrapes reach the HTTP
//! listener; policies are cloned before Portcullis starts; images are
//! pinned; the cluster trusts an identity provider; every forward-auth
//! gateway config calls the path of its convention and copies exactly the
//! headers Portcullis sets.

use std::path::{Path, PathBuf};

use portcullis::authn::config::FailureStoreKind;
use portcullis::config::Config;
use portcullis::quota::OnStoreError;
use portcullis::quota::QuotaStoreKind;
use serde_yaml_ng::Value;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key],
        })
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path).as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name}"))
}

/// A Portcullis config file in deploy/, loaded and checked.
fn config_file(file: &str) -> Config {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    let config = Config::parse(&text, &deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    config
        .check(&deploy(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    config
}

/// The config the Kubernetes ConfigMap carries.
fn k8s_config() -> Config {
    let cm = yaml("k8s/configmap.yaml");
    let text = cm["data"]["portcullis.yaml"].as_str().unwrap();
    let path = Path::new("k8s/configmap.yaml");
    let config = Config::parse(text, path).expect("the ConfigMap's config parses");
    config.check(path).expect("the ConfigMap's config checks");
    config
}

fn defaults() -> Config {
    Config::parse("{}", Path::new("defaults")).expect("an empty config is all defaults")
}

fn pod() -> Value {
    get(&yaml("k8s/deployment.yaml"), "spec.template.spec").clone()
}

/// The most replicas the Deployment can run: its own count, or the
/// autoscaler's ceiling.
fn k8s_max_replicas() -> u64 {
    let d = yaml("k8s/deployment.yaml");
    let fixed = get(&d, "spec.replicas").as_u64().unwrap_or(1);
    let hpa = yaml("k8s/hpa.yaml");
    assert_eq!(
        get(&hpa, "spec.scaleTargetRef.name").as_str(),
        get(&d, "metadata.name").as_str(),
        "the autoscaler scales the Deployment"
    );
    fixed.max(get(&hpa, "spec.maxReplicas").as_u64().unwrap_or(1))
}

/// Every counter that limits clients is shared by `replicas` processes:
/// quotas in Redis (or each replica enforces the full limit), a fallback
/// that never admits more than the limit in total, failure blocks shared.
fn counters_shared(what: &str, config: &Config, replicas: u64) -> Result<(), String> {
    if replicas <= 1 {
        return Ok(());
    }
    let q = &config.quotas;
    if !matches!(
        q.store,
        QuotaStoreKind::Redis | QuotaStoreKind::RedisCluster
    ) {
        return Err(format!(
            "{what}: {replicas} replicas on the in-process quota store each enforce the \
             full limit ({replicas} times what quotas.yaml says): set quotas.store to redis"
        ));
    }
    if q.on_store_error == OnStoreError::Local && q.replicas < replicas {
        return Err(format!(
            "{what}: quotas.replicas is {} but up to {replicas} replicas run: while Redis \
             fails, the in-process fallback would admit {replicas}/{} of every limit",
            q.replicas, q.replicas
        ));
    }
    let failures = &config.authentication.failures;
    if failures.enabled && failures.store == FailureStoreKind::Local {
        return Err(format!(
            "{what}: failure blocks counted per replica let an attacker {replicas} times through"
        ));
    }
    Ok(())
}

#[test]
fn several_replicas_need_a_shared_quota_store() {
    counters_shared("deploy/k8s", &k8s_config(), k8s_max_replicas()).unwrap();
    let compose = yaml("compose.yaml");
    let replicas = compose["services"]
        .as_mapping()
        .unwrap()
        .values()
        .filter(|s| s["build"]["dockerfile"] == "deploy/Dockerfile")
        .count();
    assert!(replicas >= 1, "compose runs Portcullis");
    counters_shared(
        "deploy/compose.yaml",
        &config_file("compose/portcullis.yaml"),
        replicas as u64,
    )
    .unwrap();
}

#[test]
fn the_replica_rule_refuses_what_it_should() {
    let local = defaults();
    assert!(counters_shared("one", &local, 1).is_ok());
    let err = counters_shared("three", &local, 3).unwrap_err();
    assert!(err.contains("in-process quota store"), "{err}");
    let mut redis = defaults();
    redis.quotas.store = QuotaStoreKind::Redis;
    redis.quotas.on_store_error = OnStoreError::Local;
    redis.quotas.replicas = 3;
    assert!(counters_shared("3 of 3", &redis, 3).is_ok());
    let err = counters_shared("3 of 20", &redis, 20).unwrap_err();
    assert!(err.contains("quotas.replicas is 3"), "{err}");
    redis.authentication.failures.store = FailureStoreKind::Local;
    let err = counters_shared("local blocks", &redis, 3).unwrap_err();
    assert!(err.contains("failure blocks"), "{err}");
}

// ---------------------------------------------------------------------------
// The image's default command
// ---------------------------------------------------------------------------

/// The instructions of the Dockerfile's last (runtime) stage, continuation
/// lines joined: (keyword, arguments).
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, a) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let k = k.to_ascii_uppercase();
        if k == "FROM" {
            stage.clear();
        }
        stage.push((k, a.trim().to_string()));
    }
    stage
}

/// The runtime stage's CMD (exec form), and its EXPOSEd ports.
fn image_command() -> (Vec<String>, Vec<u16>) {
    let stage = runtime_stage();
    let cmd = stage
        .iter()
        .rfind(|(k, _)| k == "CMD")
        .map(|(_, a)| serde_json::from_str::<Vec<String>>(a).expect("CMD in exec form"))
        .expect("a CMD");
    let exposed = stage
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    (cmd, exposed)
}

/// The listen address `flag` sets in the image's command, else the default.
fn image_listener(
    cmd: &[String],
    flag: &str,
    default: std::net::SocketAddr,
) -> std::net::SocketAddr {
    assert!(
        !cmd.iter().any(|a| a == "--config"),
        "a --config in the image's CMD: read the listeners from that file here"
    );
    cmd.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].parse().expect("a socket address"))
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// The admin listener
// ---------------------------------------------------------------------------

// The admin listener has no TLS setting (Config has none for it), so every
// deployment must keep it off any address others can reach: loopback, where
// `kubectl port-forward` or the host itself reaches it. Should the admin
// listener gain TLS, allow a non-loopback address when it is configured.

#[test]
fn admin_listener_is_not_on_a_public_address_without_tls() {
    let d = defaults();
    let (cmd, exposed) = image_command();
    let admin = image_listener(&cmd, "--admin-listen", d.admin_listen);
    assert!(
        admin.ip().is_loopback(),
        "the image's default command binds the admin listener to {admin}: plaintext \
         bearer tokens and audit queries on every interface of the container"
    );
    assert!(
        !exposed.contains(&admin.port()),
        "the image EXPOSEs the admin port {}",
        admin.port()
    );

    let k8s = k8s_config();
    assert!(
        k8s.admin_listen.ip().is_loopback(),
        "deploy/k8s binds the admin listener to {}: every pod in the cluster reaches it",
        k8s.admin_listen
    );
    let port = u64::from(k8s.admin_listen.port());
    for c in seq(&pod(), "containers") {
        assert!(
            !seq(c, "ports")
                .iter()
                .any(|p| p["containerPort"].as_u64() == Some(port)),
            "a containerPort for the loopback admin listener"
        );
    }
    let service = yaml("k8s/service.yaml");
    assert!(
        !seq(&service, "spec.ports")
            .iter()
            .any(|p| p["port"].as_u64() == Some(port) || p["targetPort"] == "admin"),
        "the Service publishes the admin port"
    );

    // The example configs run on a workstation.
    for file in ["portcullis.yaml", "demo/portcullis.yaml"] {
        let c = config_file(file);
        assert!(
            c.admin_listen.ip().is_loopback(),
            "deploy/{file}: {}",
            c.admin_listen
        );
    }

    // Compose: every container on the compose network (Envoy, the model
    // server) would reach a non-loopback admin listener.
    let compose_admin = config_file("compose/portcullis.yaml").admin_listen;
    assert!(
        compose_admin.ip().is_loopback(),
        "deploy/compose/portcullis.yaml binds the admin listener to {compose_admin}: \
         every container on the compose network reaches it"
    );
}

// ---------------------------------------------------------------------------
// Probes, scrapes and the HTTP listener
// ---------------------------------------------------------------------------

#[test]
fn probes_and_scrapes_reach_the_http_listener() {
    // The image: /healthz and /metrics answer through a published port.
    let (cmd, exposed) = image_command();
    let http = image_listener(&cmd, "--http-listen", defaults().http_listen);
    assert!(
        !http.ip().is_loopback(),
        "the image's command binds the HTTP listener to {http}: `docker run -p` cannot \
         reach /healthz or /metrics"
    );
    assert!(
        exposed.contains(&http.port()),
        "the image does not EXPOSE the HTTP port {}: {exposed:?}",
        http.port()
    );

    // Kubernetes: every probe of every container, by name or number, lands
    // on the port the HTTP listener binds, on the pod's address.
    let config = k8s_config();
    assert!(
        !config.http_listen.ip().is_loopback(),
        "the kubelet probes the pod IP"
    );
    let pod = pod();
    let mut probes = 0;
    for c in seq(&pod, "containers") {
        let ports = seq(c, "ports");
        for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let probe = &c[kind];
            if probe.is_null() {
                continue;
            }
            let port = &probe["httpGet"]["port"];
            let number = match port.as_str() {
                Some(name) => named(ports, name)["containerPort"].as_u64(),
                None => port.as_u64(),
            };
            assert_eq!(
                number,
                Some(u64::from(config.http_listen.port())),
                "{}.{kind} probes {port:?}, not the HTTP listener",
                c["name"].as_str().unwrap_or("?")
            );
            probes += 1;
        }
    }
    assert!(probes >= 3, "startup, liveness and readiness probes");
    let service = yaml("k8s/service.yaml");
    let metrics = named(seq(&service, "spec.ports"), "http-metrics");
    let portcullis = named(seq(&pod, "containers"), "portcullis");
    assert_eq!(
        named(
            seq(portcullis, "ports"),
            metrics["targetPort"].as_str().unwrap()
        )["containerPort"]
            .as_u64(),
        Some(u64::from(config.http_listen.port())),
        "the Service's metrics port targets the HTTP listener"
    );
}

// ---------------------------------------------------------------------------
// Policies before the process
// ---------------------------------------------------------------------------

/// `--name=value` flags of a container's args.
fn flag<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    seq(container, "args")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

fn mount_of<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    seq(container, "volumeMounts")
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

#[test]
fn an_init_container_clones_the_policies_before_portcullis_starts() {
    let pod = pod();
    let sidecar = named(seq(&pod, "containers"), "git-sync");
    let init: Vec<&Value> = seq(&pod, "initContainers")
        .iter()
        .filter(|c| c["image"].as_str().is_some_and(|i| i.contains("git-sync")))
        .collect();
    assert_eq!(
        init.len(),
        1,
        "one git-sync init container: without it Portcullis starts on an empty \
         policy volume and crash-loops until the sidecar's first clone lands"
    );
    let init = init[0];
    assert!(
        seq(init, "args").iter().any(|a| a == "--one-time"),
        "the init container must clone once and exit, or the pod never starts"
    );
    assert!(
        init["restartPolicy"].is_null(),
        "a native sidecar (restartPolicy: Always) does not hold Portcullis back"
    );
    for name in ["repo", "ref", "root", "link"] {
        assert_eq!(
            flag(init, name),
            flag(sidecar, name),
            "--{name}: the init container clones what the sidecar keeps in sync"
        );
    }
    assert_eq!(init["image"], sidecar["image"]);
    let volume = mount_of(init, "policies").expect("the init container mounts the policies volume");
    assert_eq!(Some(volume), mount_of(sidecar, "policies"));
    // ...and what it clones is where Portcullis looks.
    let root = flag(init, "root").unwrap();
    let link = flag(init, "link").unwrap();
    assert!(
        root.starts_with(volume),
        "--root={root} outside the volume {volume}"
    );
    let config = k8s_config();
    assert!(
        config.policies.starts_with(Path::new(root).join(link)),
        "Portcullis reads {} but git-sync publishes {root}/{link}",
        config.policies.display()
    );
    let portcullis = named(seq(&pod, "containers"), "portcullis");
    assert_eq!(mount_of(portcullis, "policies"), Some(volume));
}

// ---------------------------------------------------------------------------
// Images and identity
// ---------------------------------------------------------------------------

fn crate_version() -> String {
    let manifest =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(manifest.contains(&format!("version = \"{version}\"")));
    version.to_string()
}

#[test]
fn every_image_is_pinned_and_ours_carries_the_crate_version() {
    let pod = pod();
    let version = crate_version();
    // Every `image:` of every manifest (the Redis in redis.yaml too).
    let mut images = Vec::new();
    for file in std::fs::read_dir(deploy("k8s")).unwrap().flatten() {
        let text = std::fs::read_to_string(file.path()).unwrap();
        images.extend(text.lines().filter_map(|l| {
            let image = l.trim().strip_prefix("image:")?.trim();
            Some(image.trim_matches('"').to_string())
        }));
    }
    assert!(images.len() >= 4, "{images:?}");
    for image in &images {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && !tag.contains('/') && tag != "latest",
            "{image}: pin a tag; :latest (or none) runs whatever was pushed last"
        );
    }
    let ours = named(seq(&pod, "containers"), "portcullis")["image"]
        .as_str()
        .unwrap();
    assert!(
        ours.ends_with(&format!("portcullis:{version}")),
        "{ours}: the image of this crate version (Cargo.toml {version})"
    );
    // The Dockerfile documents building that tag, from pinned base images.
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("-t portcullis:{version} ")),
        "deploy/Dockerfile's build command tags portcullis:{version}"
    );
    for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{from}: pin the base image"
        );
    }
}

#[test]
fn the_cluster_trusts_an_identity_provider_and_not_the_test_one() {
    let config = k8s_config();
    let issuers = &config.authentication.jwt;
    assert!(
        !issuers.is_empty()
            || config.authentication.introspection.is_some()
            || config.authentication.api_keys.file.is_some()
            || config.authentication.api_keys.redis,
        "no issuer, introspection or API keys: every bearer token is refused"
    );
    for i in issuers {
        assert!(
            !i.issuer.contains("idp.test.portcullis") && i.jwks_file.is_none(),
            "{}: the test issuer (its private key is in this repository)",
            i.issuer
        );
    }
}

/// docs/envoy.md, "Path normalization contract": every bundled Envoy
/// normalizes paths before ext_authz sees them, as the page says.
#[test]
fn every_bundled_envoy_normalizes_paths_as_the_contract_says() {
    for file in [
        "envoy.yaml",
        "envoy-mtls.yaml",
        "envoy-token-ratelimit.yaml",
        "compose/envoy.yaml",
        "forward-auth/envoy-http.yaml",
    ] {
        let envoy = yaml(file);
        let managers: Vec<&Value> = seq(&envoy, "static_resources.listeners")
            .iter()
            .flat_map(|l| seq(l, "filter_chains"))
            .flat_map(|c| seq(c, "filters"))
            .filter(|f| f["name"] == "envoy.filters.network.http_connection_manager")
            .map(|f| &f["typed_config"])
            .collect();
        assert!(!managers.is_empty(), "{file}: no http_connection_manager");
        for hcm in managers {
            assert_eq!(hcm["normalize_path"], Value::Bool(true), "{file}");
            assert_eq!(hcm["merge_slashes"], Value::Bool(true), "{file}");
            assert_eq!(
                hcm["path_with_escaped_slashes_action"],
                Value::String("REJECT_REQUEST".into()),
                "{file}"
            );
        }
    }
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/envoy.md"))
            .unwrap();
    for setting in [
        "| `normalize_path` | `true` |",
        "| `merge_slashes` | `true` |",
        "| `path_with_escaped_slashes_action` | `REJECT_REQUEST` |",
    ] {
        assert!(
            doc.contains(setting),
            "docs/envoy.md does not state {setting}"
        );
    }
}

/// The headers Portcullis sets on an allowed request for the upstream.
const IDENTITY_HEADERS: [&str; 4] = [
    "x-portcullis-principal",
    "x-portcullis-decision-id",
    "x-portcullis-policy-version",
    "x-portcullis-pii",
];

fn text(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap()
}

/// The file's lines that are not comments.
fn code(file: &str) -> String {
    text(file)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn forward_auth_gateways_call_their_conventions_path_and_copy_the_identity_headers() {
    use portcullis::adapters::forward_auth::{FORWARDED_PATH, ORIGINAL_PATH};
    let prefix = defaults().forward_auth.path_prefix;

    // nginx: auth_request to /auth-request, every identity header set from
    // the answer (and so never from the client), the status kept.
    let nginx = code("forward-auth/nginx.conf");
    assert!(nginx.contains(&format!(
        "proxy_pass http://portcullis_forward_auth{ORIGINAL_PATH};"
    )));
    for h in IDENTITY_HEADERS {
        let var = h.replace('-', "_");
        assert!(
            nginx.contains(&format!("$upstream_http_{var}")),
            "nginx reads {h}"
        );
        assert!(
            nginx
                .to_ascii_lowercase()
                .contains(&format!("proxy_set_header {h} ")),
            "nginx sets {h} on the upstream request"
        );
    }
    for status in [400, 401, 403, 404, 405, 410, 413, 415, 422, 429, 500, 503] {
        assert!(
            nginx.contains(&format!(
                "if ($portcullis_status = {status}) {{ return {status} $portcullis_problem; }}"
            )),
            "nginx keeps {status}"
        );
    }

    // Caddy: /forward-auth with the original method and URI; the client's
    // X-Portcullis-* removed, each identity header copied.
    let caddy = code("forward-auth/Caddyfile").to_ascii_lowercase();
    assert!(caddy.contains(&format!("rewrite {FORWARDED_PATH}")));
    assert!(caddy.contains("header_up x-forwarded-method {method}"));
    assert!(caddy.contains("header_up x-forwarded-uri {uri}"));
    assert!(caddy.contains("request_header -x-portcullis-*"));
    for h in IDENTITY_HEADERS {
        assert!(
            caddy.contains(&format!(" {h} {{rp.header.{h}}}")),
            "Caddy copies {h}"
        );
    }

    // Traefik (structure only): the X-Forwarded-* convention, a client's
    // X-Forwarded-* never trusted, the regex taking every identity header.
    let traefik = yaml("forward-auth/traefik-dynamic.yaml");
    let fa = get(&traefik, "http.middlewares.portcullis.forwardAuth");
    assert!(fa["address"].as_str().unwrap().ends_with(FORWARDED_PATH));
    assert_eq!(fa["trustForwardHeader"], Value::Bool(false));
    let regex = regex::Regex::new(fa["authResponseHeadersRegex"].as_str().unwrap()).unwrap();
    for h in IDENTITY_HEADERS {
        // Traefik matches Go's canonical header names.
        let canonical = h
            .split('-')
            .map(|w| format!("{}{}", w[..1].to_ascii_uppercase(), &w[1..]))
            .collect::<Vec<_>>()
            .join("-");
        assert!(regex.is_match(&canonical), "Traefik copies {canonical}");
    }
    assert!(!regex.is_match("Authorization") && !regex.is_match("Ratelimit-Limit"));
    let static_config = yaml("forward-auth/traefik.yml");
    assert_eq!(
        get(&static_config, "providers.file.filename").as_str(),
        Some("deploy/forward-auth/traefik-dynamic.yaml")
    );
    assert_eq!(
        seq(&traefik, "http.routers.models.middlewares"),
        [Value::String("portcullis".into())]
    );

    // Envoy's HTTP mode: the request line after Portcullis's prefix, every
    // identity header to the upstream, bodies sent.
    let envoy = yaml("forward-auth/envoy-http.yaml");
    let filters = get(
        &envoy,
        "static_resources.listeners.0.filter_chains.0.filters.0.typed_config.http_filters",
    );
    let ext_authz = named(
        filters.as_sequence().unwrap(),
        "envoy.filters.http.ext_authz",
    );
    let service = get(ext_authz, "typed_config.http_service");
    assert_eq!(service["path_prefix"].as_str(), Some(prefix.as_str()));
    assert_eq!(
        seq(
            service,
            "authorization_response.allowed_upstream_headers.patterns"
        ),
        [serde_yaml_ng::from_str::<Value>("{prefix: x-portcullis-}").unwrap()]
    );
    assert_eq!(
        get(ext_authz, "typed_config.failure_mode_allow"),
        &Value::Bool(false)
    );
    assert!(get(
        ext_authz,
        "typed_config.with_request_body.max_request_bytes"
    )
    .is_u64());

    // Gateway API: the same convention, the same prefix and headers.
    let docs: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&text("forward-auth/gateway-api.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let route = docs
        .iter()
        .find(|d| d["kind"] == "HTTPRoute")
        .expect("an HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    let filter = &route["spec"]["rules"][0]["filters"][0];
    assert_eq!(filter["type"], "ExternalAuth");
    let auth = &filter["externalAuth"];
    assert_eq!(auth["protocol"], "HTTP");
    assert_eq!(auth["http"]["path"].as_str(), Some(prefix.as_str()));
    let allowed: Vec<&str> = seq(auth, "http.allowedResponseHeaders")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(allowed, IDENTITY_HEADERS);
    assert!(auth["forwardBody"]["maxSize"].is_u64());
    assert!(docs.iter().any(|d| d["kind"] == "ReferenceGrant"));
}

/// The Portcullis config snippet in a file's leading comment (the lines
/// indented under `# Portcullis side`), without the comment marks.
fn commented_config(file: &str) -> String {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("# Portcullis side"))
        .skip(1)
        .skip_while(|l| l.trim() == "#")
        .take_while(|l| l.starts_with("#  "))
        .map(|l| &l[4..])
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_audit_collector_receives_otlp_grpc_batches_and_keeps_a_verifiable_file() {
    let file = "otel-collector/audit-logs.yaml";
    let collector = yaml(file);
    let snippet = commented_config(file);
    let config =
        Config::parse(&snippet, &deploy(file)).unwrap_or_else(|e| panic!("{e}\n{snippet}"));
    config.check(&deploy(file)).unwrap();
    let export = config.audit.export.expect("the snippet sets audit.export");
    let receiver = get(&collector, "receivers.otlp.protocols.grpc.endpoint")
        .as_str()
        .unwrap();
    let port = |s: &str| s.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        port(&export.endpoint),
        port(receiver),
        "Portcullis exports to the port the otlp receiver's gRPC protocol listens on"
    );

    let pipeline = get(&collector, "service.pipelines.logs/audit");
    let names = |key: &str| -> Vec<String> {
        seq(pipeline, key)
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("receivers"), ["otlp"]);
    assert!(names("processors").contains(&"batch".to_string()));
    for section in ["receivers", "processors", "exporters"] {
        for name in names(section) {
            assert!(
                !get(&collector, &format!("{section}.{name}")).is_null(),
                "{section}.{name} is used by the pipeline but not defined"
            );
        }
    }
    for name in seq(&collector, "service.extensions") {
        let name = name.as_str().unwrap();
        assert!(
            !get(&collector, &format!("extensions.{name}")).is_null(),
            "{name}"
        );
    }
    // The pipeline keeps what `portcullis audit verify` reads: OTLP/JSON.
    let file_exporter = names("exporters")
        .into_iter()
        .find(|e| e == "file" || e.starts_with("file/"))
        .expect("a file exporter in the pipeline");
    assert_eq!(
        get(&collector, &format!("exporters.{file_exporter}.format")).as_str(),
        Some("json")
    );
}
