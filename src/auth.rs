//! The Collector's authentication extensions, `bearertokenauth` and `basicauth`: their YAML
//! blocks, the server side (checking a request's `Authorization` header for a receiver protocol
//! that names them with `auth: {authenticator: NAME}`) and the client side (the header an
//! `otlp`/`otlphttp` exporter sends).
//!
//! Secrets are read when the config is validated (a missing `filename` or `htpasswd.file` stops
//! start-up with its path) and never leave this module in text: [`ServerAuth`] and
//! [`ClientAuth`] print as `<redacted>`, the client header is marked sensitive, and a refusal
//! says only that credentials were missing or wrong.
//!
//! Differences from the Collector: `bearertokenauth.filename` is read at start-up (the Collector
//! also watches it for changes); htpasswd entries may be bcrypt (`$2a$`, `$2b$`, `$2y$`), `{SHA}`
//! or plain text, and other schemes (apr1 MD5, crypt) are config errors.

use std::fmt;

use base64::Engine;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::Deserialize;

use crate::yaml::ConfigError;

/// `extensions.bearertokenauth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BearerTokenAuthConfig {
    /// The header carrying the token. Default `Authorization`.
    pub header: String,
    /// Put before the token, with a space. Default `Bearer`; empty sends the token alone.
    pub scheme: String,
    pub token: String,
    /// Several accepted tokens (server side), as the Collector's `tokens`.
    pub tokens: Vec<String>,
    /// A file whose content (trimmed) is the token; wins over `token`.
    pub filename: String,
}

impl Default for BearerTokenAuthConfig {
    fn default() -> Self {
        Self {
            header: "Authorization".into(),
            scheme: "Bearer".into(),
            token: String::new(),
            tokens: Vec::new(),
            filename: String::new(),
        }
    }
}

/// `extensions.basicauth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BasicAuthConfig {
    /// The users a server accepts.
    pub htpasswd: Option<HtpasswdConfig>,
    /// What a client sends.
    pub client_auth: Option<ClientCredentials>,
}

/// `basicauth.htpasswd`: a file, inline lines, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HtpasswdConfig {
    pub file: String,
    pub inline: String,
}

/// `basicauth.client_auth`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `auth: {authenticator: NAME}` on a receiver protocol or an exporter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticatorRef {
    #[serde(default)]
    pub authenticator: String,
}

/// One configured authentication extension, by kind.
#[derive(Debug, Clone)]
pub enum AuthExtensionConfig {
    BearerToken(BearerTokenAuthConfig),
    Basic(BasicAuthConfig),
}

/// How a receiver checks a request.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAuth {
    /// The extension's ID, for metrics and logs.
    pub name: String,
    check: ServerCheck,
}

#[derive(Clone, PartialEq, Eq)]
enum ServerCheck {
    /// The header (lower case) and every value it may have (`Bearer <token>`).
    Bearer {
        header: HeaderName,
        accepted: Vec<Vec<u8>>,
    },
    /// `Authorization: Basic base64(user:password)` against these users.
    Basic { users: Vec<(String, PasswordHash)> },
}

#[derive(Clone, PartialEq, Eq)]
enum PasswordHash {
    Bcrypt(String),
    /// `{SHA}`: SHA-1 of the password.
    Sha1(Vec<u8>),
    Plain(String),
}

impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerAuth({}, <redacted>)", self.name)
    }
}

/// Why a request was refused; carries no credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
}

impl ServerAuth {
    /// The header a client must send.
    pub fn header(&self) -> &HeaderName {
        match &self.check {
            ServerCheck::Bearer { header, .. } => header,
            ServerCheck::Basic { .. } => &AUTHORIZATION,
        }
    }

    /// Checks the value of [`Self::header`] (`None` when absent).
    pub fn check(&self, value: Option<&[u8]>) -> Result<(), AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        match &self.check {
            ServerCheck::Bearer { accepted, .. } => {
                // Compare with every accepted value, in constant time per value.
                let mut ok = false;
                for a in accepted {
                    ok |= constant_time_eq(a, value);
                }
                ok.then_some(()).ok_or(AuthError::Invalid)
            }
            ServerCheck::Basic { users } => {
                let (user, password) = basic_credentials(value).ok_or(AuthError::Invalid)?;
                let Some((_, hash)) = users.iter().find(|(u, _)| *u == user) else {
                    return Err(AuthError::Invalid);
                };
                hash.verify(&password)
                    .then_some(())
                    .ok_or(AuthError::Invalid)
            }
        }
    }
}

/// What an exporter sends.
#[derive(Clone)]
pub struct ClientAuth {
    pub header: HeaderName,
    pub value: HeaderValue,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientAuth({}: <redacted>)", self.header)
    }
}

impl PasswordHash {
    fn verify(&self, password: &str) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Sha1(digest) => {
                let got = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    password.as_bytes(),
                );
                constant_time_eq(got.as_ref(), digest)
            }
            PasswordHash::Plain(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn read_secret(file: &str, path: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) => {
            errors.push(ConfigError::new(path, format!("cannot read `{file}`: {e}")));
            None
        }
    }
}

impl BearerTokenAuthConfig {
    /// The tokens this extension holds (the file's, else `token` and `tokens`).
    fn tokens(&self, path: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
        if !self.filename.is_empty() {
            return read_secret(&self.filename, &format!("{path}.filename"), errors)
                .map(|t| vec![t.trim().to_string()])
                .unwrap_or_default();
        }
        let mut tokens: Vec<String> = self.tokens.clone();
        if !self.token.is_empty() {
            tokens.insert(0, self.token.clone());
        }
        tokens
    }

    fn header_name(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<HeaderName> {
        match HeaderName::from_bytes(self.header.to_ascii_lowercase().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(ConfigError::new(
                    format!("{path}.header"),
                    format!("`{}` is not a valid header name", self.header),
                ));
                None
            }
        }
    }

    fn with_scheme(&self, token: &str) -> String {
        if self.scheme.is_empty() {
            token.to_string()
        } else {
            format!("{} {token}", self.scheme)
        }
    }
}

impl AuthExtensionConfig {
    /// The server side of the extension at `path` (`extensions.NAME`), for a receiver.
    pub fn server(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ServerAuth> {
        let before = errors.len();
        let check = match self {
            AuthExtensionConfig::BearerToken(c) => {
                let header = c.header_name(path, errors);
                let tokens = c.tokens(path, errors);
                if tokens.is_empty() && errors.len() == before {
                    errors.push(ConfigError::new(
                        path,
                        "set token, tokens or filename: a receiver with no token would refuse everyone",
                    ));
                }
                let accepted = tokens
                    .iter()
                    .map(|t| c.with_scheme(t).into_bytes())
                    .collect();
                ServerCheck::Bearer {
                    header: header?,
                    accepted,
                }
            }
            AuthExtensionConfig::Basic(c) => {
                let Some(h) = &c.htpasswd else {
                    errors.push(ConfigError::new(
                        format!("{path}.htpasswd"),
                        "a receiver's basicauth needs htpasswd (file or inline)",
                    ));
                    return None;
                };
                let mut users = Vec::new();
                if !h.file.is_empty() {
                    let at = format!("{path}.htpasswd.file");
                    if let Some(text) = read_secret(&h.file, &at, errors) {
                        parse_htpasswd(&text, &at, &mut users, errors);
                    }
                }
                parse_htpasswd(
                    &h.inline,
                    &format!("{path}.htpasswd.inline"),
                    &mut users,
                    errors,
                );
                if users.is_empty() && errors.len() == before {
                    errors.push(ConfigError::new(
                        format!("{path}.htpasswd"),
                        "no users: set htpasswd.file or htpasswd.inline",
                    ));
                }
                ServerCheck::Basic { users }
            }
        };
        (errors.len() == before).then(|| ServerAuth {
            name: name.to_string(),
            check,
        })
    }

    /// The client side of the extension at `path`, for an exporter.
    pub fn client(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<ClientAuth> {
        let before = errors.len();
        let (header, value) = match self {
            AuthExtensionConfig::BearerToken(c) => {
                let header = c.header_name(path, errors);
                let token = c.tokens(path, errors).into_iter().next();
                if token.is_none() && errors.len() == before {
                    errors.push(ConfigError::new(
                        path,
                        "set token or filename: the exporter has no token to send",
                    ));
                }
                (header?, c.with_scheme(&token?))
            }
            AuthExtensionConfig::Basic(c) => {
                let Some(creds) = &c.client_auth else {
                    errors.push(ConfigError::new(
                        format!("{path}.client_auth"),
                        "an exporter's basicauth needs client_auth (username and password)",
                    ));
                    return None;
                };
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", creds.username, creds.password));
                (AUTHORIZATION, format!("Basic {encoded}"))
            }
        };
        match HeaderValue::from_str(&value) {
            Ok(mut value) => {
                value.set_sensitive(true);
                Some(ClientAuth { header, value })
            }
            Err(_) => {
                errors.push(ConfigError::new(
                    path,
                    "the credential is not a valid header value (visible ASCII only)",
                ));
                None
            }
        }
    }
}

/// Adds the users of htpasswd `text` (`user:hash` lines; `#` comments and blank lines skipped).
fn parse_htpasswd(
    text: &str,
    path: &str,
    users: &mut Vec<(String, PasswordHash)>,
    errors: &mut Vec<ConfigError>,
) {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{path} (line {})", i + 1);
        let Some((user, hash)) = line.split_once(':') else {
            errors.push(ConfigError::new(at, "expected `user:password-hash`"));
            continue;
        };
        let hash = if hash.starts_with("$2a$")
            || hash.starts_with("$2b$")
            || hash.starts_with("$2y$")
        {
            PasswordHash::Bcrypt(hash.to_string())
        } else if let Some(b64) = hash.strip_prefix("{SHA}") {
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(d) if d.len() == 20 => PasswordHash::Sha1(d),
                _ => {
                    errors.push(ConfigError::new(
                        at,
                        format!("user `{user}`: malformed {{SHA}} hash"),
                    ));
                    continue;
                }
            }
        } else if hash.starts_with('$') {
            errors.push(ConfigError::new(
                at,
                format!("user `{user}`: this password hash scheme is not supported; use bcrypt (htpasswd -B) or {{SHA}}"),
            ));
            continue;
        } else {
            PasswordHash::Plain(hash.to_string())
        };
        users.push((user.to_string(), hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> AuthExtensionConfig {
        AuthExtensionConfig::BearerToken(BearerTokenAuthConfig {
            token: token.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_bearer_token_is_checked_with_its_scheme() {
        let mut errors = vec![];
        let auth = bearer("s3cret")
            .server("bearertokenauth", "extensions.bearertokenauth", &mut errors)
            .unwrap();
        assert_eq!(auth.header().as_str(), "authorization");
        assert_eq!(auth.check(Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(auth.check(Some(b"Bearer s3cre")), Err(AuthError::Invalid));
        assert_eq!(auth.check(Some(b"s3cret")), Err(AuthError::Invalid));
        assert_eq!(auth.check(None), Err(AuthError::Missing));
        let client = bearer("s3cret").client("e", &mut errors).unwrap();
        assert_eq!(client.value.to_str().unwrap(), "Bearer s3cret");
        assert!(client.value.is_sensitive());
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let mut errors = vec![];
        let server = bearer("s3cret").server("b", "p", &mut errors).unwrap();
        let client = bearer("s3cret").client("p", &mut errors).unwrap();
        let creds = ClientCredentials {
            username: "u".into(),
            password: "s3cret".into(),
        };
        let printed = format!("{server:?} {client:?} {creds:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[test]
    fn a_token_file_is_read_and_a_missing_one_names_its_path() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-file\n").unwrap();
        let mut errors = vec![];
        let config = AuthExtensionConfig::BearerToken(BearerTokenAuthConfig {
            filename: file.path().display().to_string(),
            ..Default::default()
        });
        let auth = config.server("b", "extensions.b", &mut errors).unwrap();
        assert_eq!(auth.check(Some(b"Bearer from-file")), Ok(()));
        let missing = AuthExtensionConfig::BearerToken(BearerTokenAuthConfig {
            filename: "/nonexistent/token".into(),
            ..Default::default()
        });
        assert!(missing.server("b", "extensions.b", &mut errors).is_none());
        assert_eq!(errors[0].path, "extensions.b.filename");
    }

    #[test]
    fn basic_auth_checks_bcrypt_sha_and_plain_htpasswd_entries() {
        let bcrypt_hash = bcrypt::hash("pw1", 4).unwrap();
        let inline = format!(
            "# users\nalice:{bcrypt_hash}\nbob:{{SHA}}{}\ncarol:pw3\n",
            base64::engine::general_purpose::STANDARD.encode(
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"pw2").as_ref()
            )
        );
        let config = AuthExtensionConfig::Basic(BasicAuthConfig {
            htpasswd: Some(HtpasswdConfig {
                inline,
                ..Default::default()
            }),
            client_auth: None,
        });
        let mut errors = vec![];
        let auth = config
            .server("basicauth", "extensions.basicauth", &mut errors)
            .unwrap();
        let header = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        for (u, p) in [("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3")] {
            assert_eq!(auth.check(Some(header(u, p).as_bytes())), Ok(()), "{u}");
        }
        assert_eq!(
            auth.check(Some(header("alice", "pw2").as_bytes())),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.check(Some(header("dave", "pw1").as_bytes())),
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.check(Some(b"Bearer x")), Err(AuthError::Invalid));
    }

    #[test]
    fn unsupported_hashes_and_missing_halves_are_config_errors_at_their_path() {
        let mut errors = vec![];
        let config = AuthExtensionConfig::Basic(BasicAuthConfig {
            htpasswd: Some(HtpasswdConfig {
                inline: "alice:$apr1$abc$def\n".into(),
                ..Default::default()
            }),
            client_auth: None,
        });
        assert!(config
            .server("b", "extensions.basicauth", &mut errors)
            .is_none());
        assert!(config.client("extensions.basicauth", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "extensions.basicauth.htpasswd.inline (line 1)",
                "extensions.basicauth.client_auth"
            ]
        );
    }
}
