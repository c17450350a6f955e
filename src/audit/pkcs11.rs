//! The checkpoint signing key in a PKCS#11 token (an HSM, a cloud HSM's
//! PKCS#11 library, SoftHSM2 in tests): the process holds a session, never
//! the key. `audit.signing_key_pkcs11` names the module, the token (label
//! or slot), the key (label) and where the user PIN comes from (a file or
//! an environment variable, never the config body). At start-up the
//! module must load, the token be present, the PIN log in, the key be an
//! Ed25519 (`CKK_EC_EDWARDS`, curve edwards25519) private key with its
//! public key on the token, and one test signature (`CKM_EDDSA`) verify
//! with that public key; any failure refuses the start with what to fix.
//! At run time a failed signature (the token removed, the HSM unreachable)
//! is an error the writer reports; the session is reopened on the next
//! try. Signatures are the same Ed25519 as `signing`'s, so checkpoints
//! verify with `portcullis audit verify --public-key` unchanged.

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::Deserialize;

use super::signing::{statement, PublicKey};

/// `audit.signing_key_pkcs11`: an Ed25519 key in a PKCS#11 token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 library, e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label (`CK_TOKEN_INFO.label`); or give `slot`.
    #[serde(default)]
    pub token_label: Option<String>,
    /// The slot id holding the token; or give `token_label`.
    #[serde(default)]
    pub slot: Option<u64>,
    /// The label (`CKA_LABEL`) of the private key and of its public key.
    pub key_label: String,
    /// File holding the user PIN (the secret-file rule: a final line
    /// ending is dropped); or give `pin_env`.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN; or give `pin_file`.
    #[serde(default)]
    pub pin_env: Option<String>,
}

impl Pkcs11Config {
    /// Every problem with the section, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let at = "audit.signing_key_pkcs11";
        if self.module.as_os_str().is_empty() {
            p.push(format!(
                "{at}.module: the token's PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so)"
            ));
        }
        if self.token_label.is_some() == self.slot.is_some() {
            p.push(format!("{at}: give exactly one of token_label and slot"));
        }
        if self.key_label.is_empty() {
            p.push(format!("{at}.key_label: must not be empty"));
        }
        if self.pin_file.is_some() == self.pin_env.is_some() {
            p.push(format!(
                "{at}: give exactly one of pin_file and pin_env (the PIN never goes in the config file)"
            ));
        }
        p
    }

    fn pin(&self) -> Result<AuthPin, String> {
        let at = "audit.signing_key_pkcs11";
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(file), _) => {
                let bytes = std::fs::read(file)
                    .map_err(|e| format!("{at}.pin_file: cannot read {}: {e}", file.display()))?;
                String::from_utf8(crate::authn::secret::secret(&bytes).to_vec())
                    .map_err(|_| format!("{at}.pin_file: {} is not UTF-8 text", file.display()))?
            }
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                format!("{at}.pin_env: the environment variable {var} is not set (or not UTF-8)")
            })?,
            (None, None) => return Err(format!("{at}: no pin_file or pin_env")),
        };
        if pin.is_empty() {
            return Err(format!("{at}: the PIN is empty"));
        }
        Ok(AuthPin::new(pin))
    }
}

/// An Ed25519 key in a token: signs checkpoints through a session.
pub struct TokenKey {
    config: Pkcs11Config,
    context: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    /// The logged-in session and the private key's handle in it; `None`
    /// after a failure, reopened on the next signature.
    session: Mutex<Option<(Session, ObjectHandle)>>,
    public: PublicKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenKey(id {}, key {:?} in {})",
            self.public.id(),
            self.config.key_label,
            self.config.module.display()
        )
    }
}

/// What the start-up check signs (not a checkpoint statement).
const START_UP_CHECK: &[u8] = b"portcullis-pkcs11-start-up-check-v1";

/// DER of the edwards25519 curve as `CKA_EC_PARAMS` holds it: the OID
/// 1.3.101.112 (RFC 8410), or the printable string `edwards25519` (PKCS#11
/// 3.0 allows both; SoftHSM2 writes the string).
fn is_ed25519_params(params: &[u8]) -> bool {
    const OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    const NAME: &[u8] = b"\x13\x0cedwards25519";
    params == OID || params == NAME
}

/// The 32 raw key bytes of `CKA_EC_POINT`: raw, or a DER OCTET STRING
/// around them.
fn raw_point(point: &[u8]) -> Option<&[u8]> {
    match point {
        [0x04, 0x20, raw @ ..] if raw.len() == 32 => Some(raw),
        raw if raw.len() == 32 => Some(raw),
        _ => None,
    }
}

impl TokenKey {
    /// Loads the module, finds the token and the key, logs in and makes a
    /// test signature. Errors say what is wrong and what to check; they
    /// never show the PIN.
    pub fn open(config: &Pkcs11Config) -> Result<Self, String> {
        let at = "audit.signing_key_pkcs11";
        let pin = config.pin()?;
        let context = Pkcs11::new(&config.module).map_err(|e| {
            format!(
                "{at}.module: cannot load the PKCS#11 library {}: {e}",
                config.module.display()
            )
        })?;
        context
            .initialize(CInitializeArgs::OsThreads)
            .map_err(|e| format!("{at}: the PKCS#11 library does not initialize: {e}"))?;
        let slot = find_slot(&context, config)?;
        let (session, private, public) = login(&context, slot, &pin, config)?;
        let key = TokenKey {
            config: config.clone(),
            context,
            slot,
            pin,
            session: Mutex::new(Some((session, private))),
            public,
        };
        // The key pair matches and the token signs Ed25519: a message
        // outside the checkpoint statements' domain, so this signature can
        // never pass for a checkpoint's.
        let signature = key.sign_message(START_UP_CHECK)?;
        if !key.public.verify_message(START_UP_CHECK, &signature) {
            return Err(format!(
                "{at}: the token's signature with key {:?} does not verify with its public key (a private and a public key of different pairs share the label?)",
                config.key_label
            ));
        }
        Ok(key)
    }

    /// The public key (what `portcullis audit public-key` prints).
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs "the chain up to record `seq` ends in `head`" in the token:
    /// 64 bytes, hex. An error (the token gone, the session closed) drops
    /// the session, so the next call opens a new one.
    pub fn sign(&self, seq: u64, head: &str) -> Result<String, String> {
        self.sign_message(&statement(seq, head))
    }

    /// Signs `message` in the token (pure Ed25519), hex.
    fn sign_message(&self, message: &[u8]) -> Result<String, String> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session.is_none() {
            let (s, private, _) = login(&self.context, self.slot, &self.pin, &self.config)?;
            *session = Some((s, private));
        }
        let (s, private) = session.as_ref().expect("opened above");
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        match s.sign(&mechanism, *private, message) {
            Ok(signature) => Ok(hex::encode(signature)),
            Err(e) => {
                *session = None;
                Err(format!(
                    "the PKCS#11 token did not sign with key {:?}: {e}",
                    self.config.key_label
                ))
            }
        }
    }
}

/// The slot named by `slot`, or holding the token labelled `token_label`.
fn find_slot(context: &Pkcs11, config: &Pkcs11Config) -> Result<Slot, String> {
    let at = "audit.signing_key_pkcs11";
    let slots = context
        .get_slots_with_initialized_token()
        .map_err(|e| format!("{at}: cannot list the token slots: {e}"))?;
    let mut labels = Vec::new();
    for slot in &slots {
        let label = context
            .get_token_info(*slot)
            .map(|i| i.label().trim_end().to_string())
            .unwrap_or_default();
        match (&config.token_label, config.slot) {
            (Some(want), _) if *want == label => return Ok(*slot),
            (None, Some(id)) if slot.id() == id => return Ok(*slot),
            _ => labels.push(format!("slot {} {label:?}", slot.id())),
        }
    }
    let wanted = match (&config.token_label, config.slot) {
        (Some(label), _) => format!("no token labelled {label:?}"),
        (None, Some(id)) => format!("no token in slot {id}"),
        (None, None) => "no token_label or slot".into(),
    };
    let found = if labels.is_empty() {
        "the module sees no token at all".to_string()
    } else {
        format!("tokens present: {}", labels.join(", "))
    };
    Err(format!(
        "{at}: {wanted} in {} ({found})",
        config.module.display()
    ))
}

/// A logged-in session on `slot`, the private key's handle and the public
/// key, checked to be Ed25519.
fn login(
    context: &Pkcs11,
    slot: Slot,
    pin: &AuthPin,
    config: &Pkcs11Config,
) -> Result<(Session, ObjectHandle, PublicKey), String> {
    let at = "audit.signing_key_pkcs11";
    let label = &config.key_label;
    let session = context
        .open_ro_session(slot)
        .map_err(|e| format!("{at}: cannot open a session on slot {}: {e}", slot.id()))?;
    session.login(UserType::User, Some(pin)).map_err(|e| {
        format!("{at}: cannot log in to the token (check the PIN in pin_file or pin_env): {e}")
    })?;
    let find = |class: ObjectClass| {
        session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| format!("{at}: cannot search the token: {e}"))
    };
    let private = match find(ObjectClass::PRIVATE_KEY)?.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "{at}.key_label: no private key labelled {label:?} on the token"
            ))
        }
        _ => {
            return Err(format!(
                "{at}.key_label: more than one private key labelled {label:?}"
            ))
        }
    };
    let key_type = session
        .get_attributes(private, &[AttributeType::KeyType])
        .map_err(|e| format!("{at}: cannot read the key's type: {e}"))?;
    if !matches!(
        key_type.as_slice(),
        [Attribute::KeyType(KeyType::EC_EDWARDS)]
    ) {
        return Err(format!(
            "{at}.key_label: the key {label:?} is not an Ed25519 key (CKK_EC_EDWARDS), but {key_type:?}; generate one, e.g. `pkcs11-tool --keypairgen --key-type EC:edwards25519 --label {label}`"
        ));
    }
    let Some(public) = find(ObjectClass::PUBLIC_KEY)?.first().copied() else {
        return Err(format!(
            "{at}.key_label: no public key labelled {label:?} on the token (it is needed to name the key in the chain)"
        ));
    };
    let attributes = session
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| format!("{at}: cannot read the public key: {e}"))?;
    let (mut params, mut point) = (None, None);
    for a in attributes {
        match a {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let public = params
        .filter(|p| is_ed25519_params(p))
        .and(point)
        .and_then(|p| raw_point(&p).and_then(PublicKey::from_raw))
        .ok_or_else(|| {
            format!("{at}.key_label: the public key {label:?} is not on the edwards25519 curve (only Ed25519 keys sign checkpoints)")
        })?;
    Ok((session, private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_and_curve_params_are_read_in_both_encodings() {
        let raw = [7u8; 32];
        let mut der = vec![0x04, 0x20];
        der.extend_from_slice(&raw);
        assert_eq!(raw_point(&der), Some(&raw[..]));
        assert_eq!(raw_point(&raw), Some(&raw[..]));
        assert_eq!(
            raw_point(&[0x04, 0x41, 1, 2]),
            None,
            "a P-256 point is refused"
        );
        assert!(is_ed25519_params(&[0x06, 0x03, 0x2b, 0x65, 0x70]));
        assert!(is_ed25519_params(b"\x13\x0cedwards25519"));
        assert!(
            !is_ed25519_params(b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"),
            "P-256"
        );
    }

    #[test]
    fn the_pin_never_comes_from_the_config_body_and_exactly_one_token_is_named() {
        let config: Pkcs11Config = serde_yaml_ng::from_str(
            "module: /usr/lib/softhsm/libsofthsm2.so\nkey_label: k\ntoken_label: t\nslot: 1\n",
        )
        .unwrap();
        let p = config.problems().join("\n");
        assert!(p.contains("exactly one of token_label and slot"), "{p}");
        assert!(p.contains("exactly one of pin_file and pin_env"), "{p}");
        let err = serde_yaml_ng::from_str::<Pkcs11Config>(
            "module: m\nkey_label: k\ntoken_label: t\npin: '1234'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pin"),
            "a PIN in the body is an unknown field: {err}"
        );
    }
}
