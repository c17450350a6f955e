//! The identity-provider interoperability corpus (`tests/fixtures/idp/`):
//! key sets and tokens shaped the way Keycloak, Auth0, Okta, Microsoft
//! Entra ID, Google, AWS Cognito and Dex publish and issue them, with
//! synthetic keys generated here on every run (RSA, P-256, Ed25519, `x5c`
//! chains, encryption keys next to signing keys, each provider's `kid`
//! format). Every token is verified with the provider's configuration
//! snippet, as `docs/configuration.md` shows it, through a JWKS file and a
//! JWKS URL, and maps to the identity a policy sees, or is refused for the
//! reason the corpus names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine;
use portcullis::authn::config::AuthnConfig;
use portcullis::authn::{Authentication, Authenticator};
use portcullis::request::AccessRequest;
use serde_json::{json, Value};

use crate::support::{self, now, IdentityProvider};

const PROVIDERS: &[&str] = &[
    "keycloak", "auth0", "okta", "entra", "google", "cognito", "dex",
];

fn dir(provider: &str) -> PathBuf {
    support::fixture("idp").join(provider)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A generated private key: how to sign tokens with it, and how to put it
/// in a certificate.
struct Private {
    pkcs8: Vec<u8>,
    encoding: jsonwebtoken::EncodingKey,
    certificate_algorithm: &'static rcgen::SignatureAlgorithm,
}

/// Generates a key of `kind`, fills in its public members in `jwk`.
fn generate(kind: &str, jwk: &mut serde_json::Map<String, Value>) -> Private {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pem = |der: &[u8]| {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    };
    let ec = |alg, curve_bytes: usize, certificate_algorithm| {
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(curve_bytes);
        (
            pkcs8.as_ref().to_vec(),
            b64url(x),
            b64url(y),
            certificate_algorithm,
        )
    };
    match kind {
        "RSA-2048" => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .unwrap()
                .as_ref()
                .to_vec();
            let public = pair.public_key();
            jwk.insert(
                "n".into(),
                json!(b64url(public.modulus().big_endian_without_leading_zero())),
            );
            jwk.insert(
                "e".into(),
                json!(b64url(public.exponent().big_endian_without_leading_zero())),
            );
            Private {
                encoding: jsonwebtoken::EncodingKey::from_rsa_pem(pem(&pkcs8).as_bytes()).unwrap(),
                pkcs8,
                certificate_algorithm: &rcgen::PKCS_RSA_SHA256,
            }
        }
        "EC-P256" | "EC-P384" => {
            let (pkcs8, x, y, certificate_algorithm) = if kind == "EC-P256" {
                ec(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    32,
                    &rcgen::PKCS_ECDSA_P256_SHA256,
                )
            } else {
                ec(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    48,
                    &rcgen::PKCS_ECDSA_P384_SHA384,
                )
            };
            jwk.insert("x".into(), json!(x));
            jwk.insert("y".into(), json!(y));
            Private {
                encoding: jsonwebtoken::EncodingKey::from_ec_pem(pem(&pkcs8).as_bytes()).unwrap(),
                pkcs8,
                certificate_algorithm,
            }
        }
        "Ed25519" => {
            let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
            let pair =
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.as_ref()).unwrap();
            jwk.insert("x".into(), json!(b64url(pair.public_key().as_ref())));
            Private {
                encoding: jsonwebtoken::EncodingKey::from_ed_pem(pem(pkcs8.as_ref()).as_bytes())
                    .unwrap(),
                pkcs8: pkcs8.as_ref().to_vec(),
                certificate_algorithm: &rcgen::PKCS_ED25519,
            }
        }
        other => panic!("unknown $generate {other}"),
    }
}

/// An `x5c` for `key`: its certificate alone (self-signed), or with an
/// intermediate and a root CA (`length` 3). Leaf first, standard base64.
fn chain(key: &Private, subject: &str, length: usize) -> Vec<Vec<u8>> {
    let leaf_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(key.pkcs8.clone()),
        key.certificate_algorithm,
    )
    .unwrap();
    let params = |cn: &str, ca: bool| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        }
        p
    };
    if length == 1 {
        let cert = params(subject, false).self_signed(&leaf_key).unwrap();
        return vec![cert.der().to_vec()];
    }
    let root = rcgen::CertifiedIssuer::self_signed(
        params("Example Root CA", true),
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let intermediate = rcgen::CertifiedIssuer::signed_by(
        params("Example Issuing CA", true),
        rcgen::KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let leaf = params(subject, false)
        .signed_by(&leaf_key, &intermediate)
        .unwrap();
    vec![
        leaf.der().to_vec(),
        intermediate.der().to_vec(),
        root.der().to_vec(),
    ]
}

/// One provider's key set, generated from its template.
struct Keys {
    /// The JWKS as published.
    jwks: Value,
    /// Private keys, by `$name`.
    private: HashMap<String, Private>,
    /// Published `kid` and `x5t`, by `$name`.
    kid: HashMap<String, String>,
    x5t: HashMap<String, String>,
}

fn keys(provider: &str) -> Keys {
    let template = read_json(&dir(provider).join("jwks.json"));
    let mut published = Vec::new();
    let mut private = HashMap::new();
    let mut kid = HashMap::new();
    let mut x5t = HashMap::new();
    for key in template["keys"].as_array().unwrap() {
        let mut jwk = key.as_object().unwrap().clone();
        let name = jwk.remove("$name").map(|n| n.as_str().unwrap().to_string());
        if let Some(kind) = jwk.remove("$generate") {
            let generated = generate(kind.as_str().unwrap(), &mut jwk);
            let length = match jwk.get("x5c").and_then(Value::as_str) {
                Some("$chain") => Some(1),
                Some("$chain3") => Some(3),
                _ => None,
            };
            if let Some(length) = length {
                let certs = chain(&generated, &format!("CN={provider}"), length);
                let standard = base64::engine::general_purpose::STANDARD;
                jwk.insert(
                    "x5c".into(),
                    json!(certs.iter().map(|c| standard.encode(c)).collect::<Vec<_>>()),
                );
                let sha1 = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    &certs[0],
                );
                let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &certs[0]);
                for value in jwk.values_mut() {
                    if value == "$x5t" {
                        *value = json!(b64url(sha1.as_ref()));
                    } else if value == "$x5t#S256" {
                        *value = json!(b64url(sha256.as_ref()));
                    }
                }
            }
            let name = name.clone().expect("a generated key has a $name");
            private.insert(name, generated);
        }
        if let Some(name) = name {
            if let Some(k) = jwk.get("kid").and_then(Value::as_str) {
                kid.insert(name.clone(), k.to_string());
            }
            if let Some(t) = jwk.get("x5t").and_then(Value::as_str) {
                x5t.insert(name, t.to_string());
            }
        }
        assert!(
            !jwk.values()
                .any(|v| v.as_str().is_some_and(|s| s.starts_with('$'))),
            "{provider}: a placeholder left in {jwk:?}"
        );
        published.push(Value::Object(jwk));
    }
    Keys {
        jwks: json!({ "keys": published }),
        private,
        kid,
        x5t,
    }
}

/// `value` with the corpus placeholders resolved for a token signed with
/// the key named `signer`.
fn resolve(value: &Value, keys: &Keys, signer: &str, now: i64) -> Value {
    match value {
        Value::String(s) if s.starts_with('$') => {
            let lookup = |map: &HashMap<String, String>, name: &str| {
                json!(map
                    .get(name)
                    .unwrap_or_else(|| panic!("no {s} for key {name}")))
            };
            if s == "$kid" {
                lookup(&keys.kid, signer)
            } else if let Some(name) = s.strip_prefix("$kid:") {
                lookup(&keys.kid, name)
            } else if s == "$x5t" {
                lookup(&keys.x5t, signer)
            } else if let Some(offset) = s.strip_prefix("$now") {
                let offset: i64 = if offset.is_empty() {
                    0
                } else {
                    offset.parse().unwrap_or_else(|_| panic!("bad {s}"))
                };
                json!(now + offset)
            } else {
                panic!("unknown placeholder {s}")
            }
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), resolve(v, keys, signer, now)))
                .collect(),
        ),
        Value::Array(list) => {
            Value::Array(list.iter().map(|v| resolve(v, keys, signer, now)).collect())
        }
        other => other.clone(),
    }
}

/// Signs a corpus case: the header and claims exactly as written (member
/// order included), with the named key.
fn mint(case: &Value, keys: &Keys) -> String {
    let signer = case["sign_with"].as_str().unwrap();
    let now = now();
    let header = resolve(&case["header"], keys, signer, now);
    let claims = resolve(&case["claims"], keys, signer, now);
    let alg: jsonwebtoken::Algorithm = header["alg"].as_str().unwrap().parse().unwrap();
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = &keys.private[signer].encoding;
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// The provider's configuration snippet, checked as the loader checks a
/// file.
fn snippet(provider: &str) -> (String, AuthnConfig) {
    let path = dir(provider).join("issuer.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = portcullis::config::Config::parse(&text, &path)
        .unwrap_or_else(|e| panic!("{provider}: {e}"));
    let problems = config
        .authentication
        .problems(Path::new("/nonexistent/policies"), false);
    assert!(problems.is_empty(), "{provider}: {problems:?}");
    (text, config.authentication)
}

/// The provider's configuration with its key source replaced by `source`.
fn with_key_source(mut config: AuthnConfig, source: &KeySource) -> AuthnConfig {
    for issuer in &mut config.jwt {
        issuer.discovery = false;
        issuer.jwks_url = None;
        issuer.jwks_file = None;
        match source {
            KeySource::File(path) => issuer.jwks_file = Some(path.clone()),
            KeySource::Url(url) => issuer.jwks_url = Some(url.clone()),
        }
    }
    config
}

enum KeySource {
    File(PathBuf),
    Url(String),
}

/// What the corpus expects of a case, as the identity a policy sees
/// (`principal`, `parents`, `scopes`, `claims`, `mfa`) or a refusal.
fn outcome(result: &Authentication) -> Value {
    match result {
        Authentication::Authenticated(id) => {
            assert_eq!(id.method.as_str(), "jwt");
            json!({"identity": {
                "principal": id.principal.to_string(),
                "parents": id.parents.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "scopes": id.token.scopes,
                "claims": id.token.claims,
                "mfa": id.token.mfa,
            }})
        }
        Authentication::Rejected(f) => json!({"refused": f.reason}),
        other => json!({"other": format!("{other:?}")}),
    }
}

/// The expectation in canonical form (scopes as a set).
fn expected(case: &Value) -> Value {
    let mut e = case["expect"].clone();
    if let Some(scopes) = e.pointer_mut("/identity/scopes") {
        let set: BTreeSet<String> = serde_json::from_value(scopes.clone()).unwrap();
        *scopes = json!(set);
    }
    if let Some(claims) = e.pointer_mut("/identity/claims") {
        let map: BTreeMap<String, String> = serde_json::from_value(claims.clone()).unwrap();
        *claims = json!(map);
    }
    e
}

/// Runs every case of `provider` against `authenticator`; the mismatches.
async fn run_cases(provider: &str, keys: &Keys, authenticator: &Authenticator) -> Vec<String> {
    let cases = read_json(&dir(provider).join("tokens.json"));
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 3, "{provider}: at least three cases");
    let mut failures = Vec::new();
    for case in cases {
        let token = mint(case, keys);
        let mut request = AccessRequest::for_test("GET", "/v1/models");
        request
            .headers
            .insert("authorization".into(), format!("Bearer {token}"));
        let got = outcome(&authenticator.authenticate(&request, now() as u64).await);
        let want = expected(case);
        if got != want {
            failures.push(format!(
                "{provider}: {}:\n  expected {want}\n  got      {got}",
                case["case"]
            ));
        }
    }
    failures
}

#[tokio::test]
async fn every_provider_token_maps_to_its_identity_through_a_jwks_file() {
    let mut failures = Vec::new();
    for provider in PROVIDERS {
        let keys = keys(provider);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("jwks.json");
        std::fs::write(&path, keys.jwks.to_string()).unwrap();
        let (_, config) = snippet(provider);
        let authenticator = Authenticator::new(&with_key_source(config, &KeySource::File(path)))
            .unwrap_or_else(|e| panic!("{provider}: the issuer loads: {e:?}"));
        failures.extend(run_cases(provider, &keys, &authenticator).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn every_provider_token_maps_to_its_identity_through_a_jwks_url() {
    let mut failures = Vec::new();
    for provider in PROVIDERS {
        let keys = keys(provider);
        let idp = IdentityProvider::start();
        idp.set_jwks(keys.jwks.clone());
        let (_, config) = snippet(provider);
        let authenticator =
            Authenticator::new(&with_key_source(config, &KeySource::Url(idp.jwks_url())))
                .unwrap_or_else(|e| panic!("{provider}: {e:?}"));
        authenticator.prefetch().await;
        assert_eq!(
            authenticator.unready_issuers(),
            Vec::<String>::new(),
            "{provider}: ready with the keys it can use"
        );
        failures.extend(run_cases(provider, &keys, &authenticator).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_provider_snippet_is_in_the_authentication_docs() {
    let doc = std::fs::read_to_string(support::repo().join("docs/configuration.md")).unwrap();
    for provider in PROVIDERS {
        let (text, _) = snippet(provider);
        let block = format!("```yaml\n{text}```");
        assert!(
            doc.contains(&block),
            "docs/configuration.md shows tests/fixtures/idp/{provider}/issuer.yaml verbatim in a ```yaml block"
        );
    }
}

#[test]
fn the_corpus_has_the_shapes_it_claims() {
    // x5c chains, encryption keys, several algorithms and kid formats are
    // really there, so that the corpus keeps testing what it says.
    let all: Vec<Value> = PROVIDERS
        .iter()
        .flat_map(|p| keys(p).jwks["keys"].as_array().unwrap().clone())
        .collect();
    let has = |f: &dyn Fn(&Value) -> bool| all.iter().any(f);
    assert!(has(&|k| k["x5c"].as_array().is_some_and(|c| c.len() == 3)));
    assert!(has(&|k| k["x5c"].as_array().is_some_and(|c| c.len() == 1)));
    assert!(has(&|k| k["use"] == "enc" && k["alg"] == "RSA-OAEP"));
    assert!(has(&|k| k.get("alg").is_none()));
    for alg in ["RS256", "ES256", "EdDSA"] {
        assert!(has(&|k| k["alg"] == alg), "{alg}");
    }
    let kids: Vec<&str> = all.iter().filter_map(|k| k["kid"].as_str()).collect();
    assert!(kids
        .iter()
        .any(|k| k.len() == 40 && k.bytes().all(|b| b.is_ascii_hexdigit())));
    assert!(kids.iter().any(|k| k.contains('+') || k.contains('/')));
    assert!(
        kids.iter().any(|k| k.len() == 27),
        "SHA-1 thumbprints as kid"
    );
}
