//! Every file in deploy/ is checked: Envoy's own validator where the tool
//! exists here, our config loader for Portcullis configs, and structure and
//! required fields for the Kubernetes manifests and the Dockerfile (no
//! container engine or cluster runs on this machine).

mod support;

use std::path::Path;
use std::process::Command;

use portcullis::config::Config;
use serde_yaml_ng::Value;

fn deploy(file: &str) -> std::path::PathBuf {
    support::repo().join("deploy").join(file)
}

#[test]
fn envoy_accepts_deploy_envoy_yaml() {
    let out = Command::new(support::tool("envoy"))
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(deploy("envoy.yaml"))
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy --mode validate rejected deploy/envoy.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_config_loads_and_its_policies_validate() {
    let config = Config::load(&deploy("portcullis.yaml")).expect("deploy/portcullis.yaml loads");
    portcullis::snapshot::Snapshot::load(&config.policies).expect("its policy directory loads");
    portcullis::authn::Authenticator::new(&config.authentication).expect("its issuers load");
}

fn manifest(file: &str) -> Value {
    let text = std::fs::read_to_string(deploy(&format!("k8s/{file}"))).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("k8s/{file}: {e}"))
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key],
        })
}

#[test]
fn kubernetes_manifests_have_the_required_fields() {
    let expected = [
        ("configmap.yaml", "v1", "ConfigMap"),
        ("deployment.yaml", "apps/v1", "Deployment"),
        ("service.yaml", "v1", "Service"),
        ("pdb.yaml", "policy/v1", "PodDisruptionBudget"),
        ("hpa.yaml", "autoscaling/v2", "HorizontalPodAutoscaler"),
        (
            "networkpolicy.yaml",
            "networking.k8s.io/v1",
            "NetworkPolicy",
        ),
    ];
    for (file, api, kind) in expected {
        let m = manifest(file);
        assert_eq!(get(&m, "apiVersion").as_str(), Some(api), "{file}");
        assert_eq!(get(&m, "kind").as_str(), Some(kind), "{file}");
        assert!(
            get(&m, "metadata.name")
                .as_str()
                .is_some_and(|n| n.starts_with("portcullis")),
            "{file}"
        );
    }
    let files: Vec<_> = std::fs::read_dir(deploy("k8s"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), expected.len(), "every manifest is checked");
}

#[test]
fn deployment_is_probed_hardened_and_limited() {
    let d = manifest("deployment.yaml");
    let pod = get(&d, "spec.template.spec");
    assert_eq!(
        get(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    let containers = get(pod, "containers").as_sequence().unwrap();
    let pdp = containers
        .iter()
        .find(|c| c["name"] == "portcullis")
        .expect("a portcullis container");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(
            get(pdp, &format!("{probe}.grpc.port")).as_u64(),
            Some(50051),
            "{probe}"
        );
    }
    for c in containers {
        assert_eq!(
            get(c, "securityContext.readOnlyRootFilesystem").as_bool(),
            Some(true)
        );
        assert_eq!(
            get(c, "securityContext.allowPrivilegeEscalation").as_bool(),
            Some(false)
        );
        assert!(
            get(c, "resources.limits.memory").as_str().is_some(),
            "{c:?}"
        );
    }
    assert_eq!(
        get(&d, "spec.selector.matchLabels"),
        get(&d, "spec.template.metadata.labels"),
        "the selector selects the pods"
    );
}

#[test]
fn configmap_carries_a_valid_portcullis_config() {
    let m = manifest("configmap.yaml");
    let text = m["data"]["portcullis.yaml"]
        .as_str()
        .expect("data: portcullis.yaml");
    let config = Config::parse(text, Path::new("configmap.yaml")).expect("parses");
    config.check(Path::new("configmap.yaml")).expect("checks");
    assert!(
        config.reload.poll_seconds > 0,
        "git-sync swaps a symlink: polling must be on"
    );
    // The Deployment mounts the git-sync root where the config looks.
    let d = manifest("deployment.yaml");
    let mounts = get(&d, "spec.template.spec.containers.0.volumeMounts")
        .as_sequence()
        .unwrap();
    let policies_mount = mounts.iter().find(|m| m["name"] == "policies").unwrap();
    let mount = policies_mount["mountPath"].as_str().unwrap();
    assert!(
        config.policies.starts_with(mount),
        "{} not under {mount}",
        config.policies.display()
    );
    // The root file system is read-only: the audit trail must live on a
    // writable mount, or Portcullis cannot start.
    let writable = mounts.iter().any(|m| {
        m["readOnly"].as_bool() != Some(true)
            && m["mountPath"]
                .as_str()
                .is_some_and(|p| config.audit.directory.starts_with(p))
    });
    assert!(
        config.audit.directory.is_absolute() && writable,
        "audit directory {} is not on a writable volume",
        config.audit.directory.display()
    );
}

#[test]
fn network_policy_admits_only_the_gateway_to_the_decision_port() {
    let n = manifest("networkpolicy.yaml");
    let rules = get(&n, "spec.ingress").as_sequence().unwrap();
    let decision: Vec<_> = rules
        .iter()
        .filter(|r| {
            r["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["port"].as_u64() == Some(50051))
        })
        .collect();
    assert_eq!(decision.len(), 1);
    let labels = &decision[0]["from"][0]["podSelector"]["matchLabels"];
    assert_eq!(
        labels["app.kubernetes.io/name"].as_str(),
        Some("envoy-gateway")
    );
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage build");
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root:") || user.contains("nonroot"),
        "{user}"
    );
    assert!(!user.ends_with(" root") && !user.contains(" 0"), "{user}");
    assert!(
        text.contains("--locked"),
        "reproducible dependency versions"
    );
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/portcullis\"]"));
    // The default audit directory (./audit) must be writable by nonroot.
    assert!(text.contains("WORKDIR /var/lib/portcullis"), "{text}");
    assert!(
        text.contains("--chown=nonroot:nonroot /out/var/lib/portcullis"),
        "{text}"
    );
}

#[test]
fn envoy_accepts_the_compose_config() {
    // (deploy/envoy-mtls.yaml names certificate files; tests/tls_listener.rs
    // runs it with generated ones.)
    let out = Command::new(support::tool("envoy"))
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(deploy("compose/envoy.yaml"))
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy --mode validate rejected deploy/compose/envoy.yaml:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// The HTTP filters of an Envoy config's first listener.
fn http_filters(config: &Value) -> &Value {
    &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
}

#[test]
fn compose_envoy_has_the_same_filters_as_deploy_envoy() {
    let compose = yaml("compose/envoy.yaml");
    let main = yaml("envoy.yaml");
    assert!(http_filters(&main)
        .as_sequence()
        .is_some_and(|f| f.len() >= 3));
    assert_eq!(
        http_filters(&compose),
        http_filters(&main),
        "the filter chains drifted apart"
    );
}

#[test]
fn compose_file_names_the_stack_and_its_files_exist() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["redis", "portcullis-1", "portcullis-2", "model", "envoy"] {
        assert!(services.contains_key(name), "service {name}");
    }
    // Every host path mounted into a container exists (relative to deploy/).
    let mut mounts = Vec::new();
    for (_, service) in services {
        for v in service["volumes"].as_sequence().into_iter().flatten() {
            mounts.push(v.as_str().unwrap().split(':').next().unwrap().to_string());
        }
    }
    // The two replicas share one anchor: their mounts come from it.
    for v in compose["x-portcullis"]["volumes"].as_sequence().unwrap() {
        mounts.push(v.as_str().unwrap().split(':').next().unwrap().to_string());
    }
    assert!(mounts.len() >= 5, "{mounts:?}");
    for m in mounts {
        assert!(
            deploy(&m).exists(),
            "deploy/{m} is mounted but does not exist"
        );
    }
    // The replicas share quotas through Redis.
    let config = Config::parse(
        &std::fs::read_to_string(deploy("compose/portcullis.yaml")).unwrap(),
        Path::new("compose/portcullis.yaml"),
    )
    .expect("parses");
    config
        .check(Path::new("compose/portcullis.yaml"))
        .expect("checks");
    assert_eq!(config.quotas.replicas, 2);
    assert_eq!(
        config.quotas.redis_url.as_deref(),
        Some("redis://redis:6379/0")
    );
}

#[test]
fn demo_script_runs_to_the_end() {
    // The demo builds nothing when given the binary; it installs tools only
    // when missing. Bounded: every wait in it is.
    let out = Command::new("bash")
        .arg(support::repo().join("scripts/demo.sh"))
        .env("PORTCULLIS_BIN", env!("CARGO_BIN_EXE_portcullis"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                support::repo().join(".tools/bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 401 Unauthorized",
        "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 422 Unprocessable Entity",
        "\"pointer\":\"/features\"",
        "deprecation: @1788220800",
        "HTTP/1.1 429 Too Many Requests",
        "HTTP/1.1 404 Not Found",
        "\"principal\": \"User::\\\"bob\\\"\"",
        "\"ok\": true",
        "demo: done",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // Tokens are never printed.
    assert!(!stdout.contains("Bearer eyJhbGciOiJSUzI1NiIs"), "{stdout}");
    // The card number is printed once, in the request the demo shows, and
    // never echoed back.
    assert_eq!(stdout.matches("4111 1111 1111 1111").count(), 1, "{stdout}");
}
