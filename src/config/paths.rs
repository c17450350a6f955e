//! The path-valued settings of the configuration, in one list: each is
//! resolved against the config file's directory (when relative; all but
//! the PKCS#11 module, which the dynamic loader finds) and refused when
//! given empty, so a new one gets both by joining the list.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::Config;

/// One path-valued setting of `Config::path_settings`.
struct PathSetting<'c> {
    /// Its name in the file, e.g. `authentication.jwt[0].jwks_file`.
    name: Cow<'static, str>,
    /// What it names, for messages: `the policy directory`.
    what: &'static str,
    /// Whether leaving it out is a choice (none) rather than its default.
    optional: bool,
    /// Whether a relative path resolves against the config file's
    /// directory.
    resolves: bool,
    path: &'c mut PathBuf,
}

impl<'c> PathSetting<'c> {
    fn required(
        name: impl Into<Cow<'static, str>>,
        what: &'static str,
        path: &'c mut PathBuf,
    ) -> Self {
        PathSetting {
            name: name.into(),
            what,
            optional: false,
            resolves: true,
            path,
        }
    }

    fn optional(
        name: impl Into<Cow<'static, str>>,
        what: &'static str,
        path: &'c mut PathBuf,
    ) -> Self {
        PathSetting {
            optional: true,
            ..PathSetting::required(name, what, path)
        }
    }
}

impl Config {
    /// Every path-valued setting, in one list, so that a new one is both
    /// resolved and refused empty: an empty path would otherwise resolve
    /// to the config file's own directory, or name nothing at all
    /// (`policy directory  does not exist`).
    fn path_settings(&mut self) -> Vec<PathSetting<'_>> {
        let mut settings = vec![
            PathSetting::required("policies", "the policy directory", &mut self.policies),
            PathSetting::required(
                "audit.directory",
                "the audit directory",
                &mut self.audit.directory,
            ),
        ];
        let optional = [
            (
                "audit.hmac_key_file",
                "the checkpoint HMAC key file",
                &mut self.audit.hmac_key_file,
            ),
            (
                "audit.signing_key_file",
                "the Ed25519 signing key file",
                &mut self.audit.signing_key_file,
            ),
            (
                "tls.cert_file",
                "the server certificate file",
                &mut self.tls.cert_file,
            ),
            (
                "tls.key_file",
                "the server key file",
                &mut self.tls.key_file,
            ),
            (
                "tls.client_ca_file",
                "the client CA file",
                &mut self.tls.client_ca_file,
            ),
            (
                "authentication.api_keys.file",
                "the API keys file",
                &mut self.authentication.api_keys.file,
            ),
        ];
        settings.extend(optional.into_iter().filter_map(|(name, what, path)| {
            Some(PathSetting::optional(name, what, path.as_mut()?))
        }));
        if let Some(token) = &mut self.audit.signing_key_pkcs11 {
            // A library path without a directory is the dynamic loader's to
            // find (`libsofthsm2.so`): never resolved.
            settings.push(PathSetting {
                resolves: false,
                ..PathSetting::required(
                    "audit.signing_key_pkcs11.module",
                    "the token's PKCS#11 library",
                    &mut token.module,
                )
            });
            if let Some(pin) = &mut token.pin_file {
                settings.push(PathSetting::optional(
                    "audit.signing_key_pkcs11.pin_file",
                    "the PIN file",
                    pin,
                ));
            }
        }
        if let Some(export) = &mut self.audit.export {
            for (name, what, path) in [
                (
                    "audit.export.ca_file",
                    "the collector's CA file",
                    &mut export.ca_file,
                ),
                (
                    "audit.export.cert_file",
                    "the client certificate file",
                    &mut export.cert_file,
                ),
                (
                    "audit.export.key_file",
                    "the client key file",
                    &mut export.key_file,
                ),
            ] {
                if let Some(path) = path {
                    settings.push(PathSetting::optional(name, what, path));
                }
            }
        }
        for (i, issuer) in self.authentication.jwt.iter_mut().enumerate() {
            for (field, what, path) in [
                ("jwks_file", "the JWKS file", &mut issuer.jwks_file),
                (
                    "hmac_secret_file",
                    "the HMAC secret file",
                    &mut issuer.hmac_secret_file,
                ),
            ] {
                if let Some(path) = path {
                    settings.push(PathSetting::optional(
                        format!("authentication.jwt[{i}].{field}"),
                        what,
                        path,
                    ));
                }
            }
        }
        if let Some(path) = self
            .authentication
            .introspection
            .as_mut()
            .and_then(|i| i.client_secret_file.as_mut())
        {
            settings.push(PathSetting::optional(
                "authentication.introspection.client_secret_file",
                "the client secret file",
                path,
            ));
        }
        for (i, app) in self.authentication.signatures.apps.iter_mut().enumerate() {
            settings.push(PathSetting::required(
                format!("authentication.signatures.apps[{i}].secret_file"),
                "the app's secret file",
                &mut app.secret_file,
            ));
        }
        settings
    }

    /// A problem for every path setting given as `""`.
    pub(super) fn empty_paths(&mut self) -> Vec<String> {
        self.path_settings()
            .into_iter()
            .filter(|s| s.path.as_os_str().is_empty())
            .map(|s| {
                let or = if s.optional {
                    ", or leave the setting out"
                } else {
                    ""
                };
                format!("{}: empty; give {}'s path{or}", s.name, s.what)
            })
            .collect()
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for s in self.path_settings() {
            if s.resolves && s.path.is_relative() {
                *s.path = base.join(&*s.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relative_path_setting_resolves_against_the_config_directory_but_the_pkcs11_module() {
        let text = "policies: p\naudit:\n  directory: a\n  hmac_key_file: k/hmac.key\n  signing_key_file: k/sign.pem\n  signing_key_pkcs11: {module: libsofthsm2.so, key_label: k, pin_file: k/pin}\n  export: {endpoint: 'https://c:4317', ca_file: k/ca.pem, cert_file: k/c.pem, key_file: k/c.key}\ntls: {cert_file: k/s.pem, key_file: k/s.key, client_ca_file: k/cca.pem}\nauthentication:\n  api_keys: {file: keys.yaml}\n  jwt:\n    - {issuer: i, audiences: [a], jwks_file: k/jwks.json, hmac_secret_file: k/jwt.key}\n  introspection: {endpoint: 'https://idp/introspect', client_id: c, client_secret_file: k/client.secret}\n  signatures:\n    apps: [{app: a, secret_file: app.key}, {app: b, secret_file: k/b.key}]\n";
        let mut config = Config::parse(text, Path::new("c.yaml")).unwrap();
        let base = Path::new("/etc/portcullis");
        config.resolve_paths(base);
        let settings = config.path_settings();
        // Every setting of the list is given above: a new one joins it.
        assert_eq!(settings.len(), 18, "give every path setting above");
        for s in settings {
            if s.name == "audit.signing_key_pkcs11.module" {
                // The dynamic loader searches for a bare library name.
                assert_eq!(*s.path, Path::new("libsofthsm2.so"));
            } else {
                assert!(
                    s.path.starts_with(base) && s.path != base,
                    "{} not resolved: {}",
                    s.name,
                    s.path.display()
                );
            }
        }
        assert_eq!(
            config.authentication.signatures.apps[0].secret_file,
            Path::new("/etc/portcullis/app.key")
        );
    }

    #[test]
    fn an_empty_path_setting_is_refused_naming_it() {
        let text = "policies: ''\naudit:\n  directory: ''\n  hmac_key_file: ''\n  signing_key_pkcs11: {module: '', key_label: k, pin_file: ''}\ntls:\n  cert_file: ''\n  key_file: k.pem\nauthentication:\n  api_keys: {file: ''}\n  jwt:\n    - issuer: i\n      audiences: [a]\n      jwks_file: ''\n  signatures:\n    apps: [{app: a, secret_file: ''}]\n";
        let err = Config::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        for needle in [
            "policies: empty; give the policy directory's path",
            "audit.directory: empty; give the audit directory's path",
            "audit.hmac_key_file: empty; give the checkpoint HMAC key file's path, or leave the setting out",
            "audit.signing_key_pkcs11.module: empty; give the token's PKCS#11 library's path",
            "audit.signing_key_pkcs11.pin_file: empty; give the PIN file's path, or leave the setting out",
            "tls.cert_file: empty; give the server certificate file's path, or leave the setting out",
            "authentication.api_keys.file: empty; give the API keys file's path, or leave the setting out",
            "authentication.jwt[0].jwks_file: empty; give the JWKS file's path, or leave the setting out",
            "authentication.signatures.apps[0].secret_file: empty; give the app's secret file's path",
        ] {
            assert!(
                err.lines().any(|line| line.trim() == needle),
                "missing {needle:?} in {err}"
            );
        }
        assert!(!err.contains("tls.key_file"), "{err}");

        // Refused before relative paths resolve: `''` joined to the config
        // file's directory would name that directory.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, "policies: ''\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("policies: empty; give the policy directory's path"),
            "{err}"
        );
    }
}
