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
}
