//! TLS certificates generated per test with rcgen: a CA, a server
//! certificate, and client certificates from that CA and from another one.

use std::path::PathBuf;

use tempfile::TempDir;

/// PEM files for one test: a CA, a server certificate for `127.0.0.1` and
/// `localhost`, a client certificate (SPIFFE URI SAN) from that CA, and a
/// client certificate from another CA. Files live in `dir`.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

/// The SPIFFE id in [`TestPki`]'s client certificate.
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://acme.example/ns/edge/sa/envoy";

fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    sans: Vec<rcgen::SanType>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Generates everything into a fresh temporary directory.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = test_ca("portcullis test CA");
        let other = test_ca("some other CA");
        let (server_cert, server_key) = leaf(
            &ca,
            vec![
                rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
                rcgen::SanType::DnsName("localhost".try_into().unwrap()),
                rcgen::SanType::DnsName("portcullis.internal".try_into().unwrap()),
            ],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client_san = || vec![rcgen::SanType::URI(GATEWAY_SPIFFE_ID.try_into().unwrap())];
        let (client_cert, client_key) = leaf(
            &ca,
            client_san(),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (other_cert, other_key) = leaf(
            &other,
            client_san(),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other.pem()),
            other_client_cert: write("other-client.pem", &other_cert),
            other_client_key: write("other-client.key", &other_key),
            dir,
        }
    }
}
