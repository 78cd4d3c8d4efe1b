//! Bearer tokens: the file a node reads them from, and their constant-time lookup.
//!
//! ```toml
//! [[token]]
//! name = "ci"                 # a label for logs (optional; required for `remote`)
//! role = "write"              # read, write, worker, admin or remote
//! value = "…at least 16 characters…"
//!
//! [[token]]
//! role = "admin"
//! env = "KEEL_ADMIN_TOKEN"    # the value is read from the node's environment
//! ```
//!
//! Tokens never come from the command line (they would show in `ps`). Any number may be
//! valid at once, also for one role: to rotate, add the new token, move the clients over,
//! remove the old one; the node rereads the file when it changes
//! ([`super::reload`]). A presented token is hashed (SHA-256) and compared with every
//! configured token's hash in constant time, so neither its content nor which entry it
//! matched shows in the time taken.

use std::path::Path;

use ring::digest::{SHA256, digest};
use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::error::{Result, SecurityError};
use super::roles::Role;

/// The shortest token accepted, in bytes.
pub const TOKEN_MIN_BYTES: usize = 16;

/// The tokens file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: Option<String>,
    role: Role,
    value: Option<String>,
    env: Option<String>,
}

/// One accepted token: its label, role and hash.
#[derive(Debug, Clone)]
struct Accepted {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// Who a token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The token's label.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The tokens a node accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Accepted>);

fn hash(token: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, token).as_ref());
    out
}

impl Tokens {
    /// The tokens of the file at `path`, reading `env` entries from `environment`.
    ///
    /// # Errors
    /// The file cannot be read or parsed; an entry has no value, both a value and an
    /// environment variable, an unset variable, a value shorter than [`TOKEN_MIN_BYTES`],
    /// or the role `node` (which only certificates carry).
    pub fn load(path: &Path, environment: impl Fn(&str) -> Option<String>) -> Result<Self> {
        const WHAT: &str = "tokens file";
        let invalid = |reason: String| SecurityError::Invalid {
            what: WHAT,
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            what: WHAT,
            path: path.to_owned(),
            source,
        })?;
        // toml's own message quotes the offending line, which may hold a token: say only
        // where and what.
        let file: TokensFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            });
            invalid(format!("line {line}: {}", e.message()))
        })?;
        let mut accepted = Vec::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            if entry.role == Role::Remote && entry.name.is_none() {
                return Err(invalid(format!(
                    "token {}: a remote token needs a name: the cluster it is issued to, its principal",
                    i + 1
                )));
            }
            let name = entry.name.unwrap_or_else(|| format!("token {}", i + 1));
            if entry.role == Role::Node {
                return Err(invalid(format!(
                    "{name}: the node role is carried by node certificates only"
                )));
            }
            let value = match (entry.value, entry.env) {
                (Some(value), None) => value,
                (None, Some(var)) => environment(&var).ok_or_else(|| {
                    invalid(format!("{name}: the environment variable {var} is not set"))
                })?,
                _ => {
                    return Err(invalid(format!(
                        "{name}: give exactly one of `value` and `env`"
                    )));
                }
            };
            if value.len() < TOKEN_MIN_BYTES {
                return Err(invalid(format!(
                    "{name}: a token must have at least {TOKEN_MIN_BYTES} bytes"
                )));
            }
            accepted.push(Accepted {
                name,
                role: entry.role,
                hash: hash(value.as_bytes()),
            });
        }
        Ok(Self(accepted))
    }

    /// Who `token` identifies, if it is one of these. Every entry is compared, in constant
    /// time each; the last matching entry wins (entries are distinct in practice).
    pub fn identify(&self, token: &str) -> Option<TokenIdentity> {
        let presented = hash(token.as_bytes());
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, accepted) in (0u64..).zip(&self.0) {
            let matched = accepted.hash.ct_eq(&presented);
            index = u64::conditional_select(&index, &i, matched);
            found |= matched;
        }
        let found: bool = found.into();
        let accepted = self.0.get(usize::try_from(index).ok()?).filter(|_| found)?;
        Some(TokenIdentity {
            name: accepted.name.clone(),
            role: accepted.role,
        })
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Tokens> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, text).expect("write");
        Tokens::load(&path, |var| {
            env.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn tokens_identify_their_role_and_nothing_else_does() {
        let tokens = load(
            "[[token]]\nname = \"ci\"\nrole = \"write\"\nvalue = \"0123456789abcdef\"\n\
             [[token]]\nrole = \"admin\"\nenv = \"ADMIN\"\n\
             [[token]]\nname = \"next\"\nrole = \"write\"\nvalue = \"fedcba9876543210\"\n",
            &[("ADMIN", "admin-token-of-16b")],
        )
        .expect("load");
        assert_eq!(tokens.len(), 3);
        let who = |token| tokens.identify(token).map(|t| (t.name, t.role));
        assert_eq!(who("0123456789abcdef"), Some(("ci".into(), Role::Write)));
        assert_eq!(who("fedcba9876543210"), Some(("next".into(), Role::Write)));
        assert_eq!(
            who("admin-token-of-16b"),
            Some(("token 2".into(), Role::Admin))
        );
        assert_eq!(who("0123456789abcdeF"), None);
        assert_eq!(who("0123456789abcde"), None);
        assert_eq!(who(""), None);
        assert_eq!(Tokens::default().identify("0123456789abcdef"), None);
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        let cases = [
            (
                "[[token]]\nrole = \"write\"\nvalue = \"short\"\n",
                "at least 16 bytes",
            ),
            (
                "[[token]]\nrole = \"node\"\nvalue = \"0123456789abcdef\"\n",
                "node certificates only",
            ),
            ("[[token]]\nrole = \"write\"\n", "exactly one of"),
            (
                "[[token]]\nrole = \"remote\"\nvalue = \"0123456789abcdef\"\n",
                "a remote token needs a name",
            ),
            (
                "[[token]]\nrole = \"write\"\nvalue = \"0123456789abcdef\"\nenv = \"X\"\n",
                "exactly one of",
            ),
            (
                "[[token]]\nrole = \"write\"\nenv = \"UNSET\"\n",
                "UNSET is not set",
            ),
            (
                "[[token]]\nrole = \"root\"\nvalue = \"0123456789abcdef\"\n",
                "unknown variant",
            ),
            (
                "[[token]]\nrole = \"read\"\nvalu = \"0123456789abcdef\"\n",
                "unknown field",
            ),
            (
                "[[token]]\nrole = \"read\"\nvalue = \"0123456789abcdef\n",
                "line 3",
            ),
        ];
        for (text, reason) in cases {
            let error = load(text, &[]).expect_err(text).to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
            assert!(
                !error.contains("0123456789abcdef"),
                "a token in an error: {error}"
            );
        }
        assert!(load("", &[]).expect("an empty file").is_empty());
    }
}
