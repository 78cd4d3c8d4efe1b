//! A cluster's identity: its name and an incarnation of 16 bytes drawn once from the
//! operating system's random source, committed in the Raft log so that every replica agrees
//! on it from the same entry (scheduler/REMOTE.md §3: what calls between clusters build on).
//!
//! The first leader that finds no identity committed mints one with its `cluster` name and
//! proposes it as a host command: the byte [`IDENTITY_TAG`], a `replace` flag (0 or 1), the
//! name's length (one byte) and bytes, the 16 incarnation bytes and, in a replacement, its
//! stamp (8 bytes, little endian). Applying it is
//! first-wins: a later identity without `replace` changes nothing, and every proposal is
//! answered with the identity in force. A cluster re-created from old data must mint a new
//! one with `replace` set, so that "the same name, another history" is visible to the
//! clusters it talks to. The identity lives in the host's state and its snapshots and is
//! reported in `Status` as `name.incarnation` (32 lower-case hex digits).

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use ring::rand::{SecureRandom, SystemRandom};
use rkyv::{Archive, Deserialize, Serialize};

/// The first byte of an identity command; applications' tags are small, a session
/// registration is `0xFE` and a coalesced batch `0xFF`.
pub const IDENTITY_TAG: u8 = 0xFD;
/// The longest cluster name an identity holds.
pub const NAME_MAX_BYTES: usize = 64;
/// Bytes of an incarnation.
pub const INCARNATION_BYTES: usize = 16;
/// Bytes of an identity command before the name: tag, `replace` flag, name length.
const COMMAND_PREFIX_BYTES: usize = 3;
/// Bytes of a replacement's stamp, after the incarnation.
const STAMP_BYTES: usize = 8;

/// Why an identity cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The name breaks the naming rule.
    #[error(
        "cluster name {0:?} cannot name a cluster identity: it must be 1 to 64 bytes of A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    Name(String),
    /// The text is not `name.` and 32 lower-case hex digits.
    #[error("{0:?} is not a cluster identity (`name.` and 32 lower-case hex digits)")]
    Malformed(String),
    /// The operating system's random source failed.
    #[error("the operating system's random source failed")]
    Random,
}

/// A cluster's name and incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct ClusterIdentity {
    name: String,
    incarnation: [u8; INCARNATION_BYTES],
}

impl ClusterIdentity {
    /// The identity `name` with `incarnation`.
    ///
    /// # Errors
    /// [`IdentityError::Name`] if `name` breaks the naming rule.
    pub fn new(name: &str, incarnation: [u8; INCARNATION_BYTES]) -> Result<Self, IdentityError> {
        let valid = (1..=NAME_MAX_BYTES).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(IdentityError::Name(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            incarnation,
        })
    }

    /// A new identity for the cluster `name`: its incarnation drawn from the operating
    /// system's random source.
    ///
    /// # Errors
    /// [`IdentityError::Name`]; [`IdentityError::Random`] if the random source fails.
    pub fn mint(name: &str) -> Result<Self, IdentityError> {
        Self::new(name, random_incarnation()?)
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The incarnation's bytes.
    pub fn incarnation(&self) -> [u8; INCARNATION_BYTES] {
        self.incarnation
    }

    /// The command that commits this identity as `commit` says.
    ///
    /// # Panics
    /// Never: a valid name is at most 64 bytes, so its length fits the command's length byte.
    pub fn commit_command(&self, commit: Commit) -> Bytes {
        let name_len = u8::try_from(self.name.len()).expect("a valid name is at most 64 bytes");
        let mut out = BytesMut::with_capacity(
            COMMAND_PREFIX_BYTES + self.name.len() + INCARNATION_BYTES + STAMP_BYTES,
        );
        out.put_u8(IDENTITY_TAG);
        out.put_u8(u8::from(matches!(commit, Commit::Replace { .. })));
        out.put_u8(name_len);
        out.put_slice(self.name.as_bytes());
        out.put_slice(&self.incarnation);
        if let Commit::Replace { stamp_ms } = commit {
            out.put_u64_le(stamp_ms);
        }
        out.freeze()
    }
}

/// What an identity command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The cluster's first identity: applied only if none is in force.
    First,
    /// A replacement (an operator's remint), stamped with its proposer's wall clock: what
    /// the application ends when it applies the replacement is stamped with it, the same
    /// on every replica.
    Replace {
        /// Milliseconds since the Unix epoch.
        stamp_ms: u64,
    },
}

/// A new incarnation, drawn from the operating system's random source.
///
/// # Errors
/// [`IdentityError::Random`] if the random source fails.
pub fn random_incarnation() -> Result<[u8; INCARNATION_BYTES], IdentityError> {
    let mut incarnation = [0u8; INCARNATION_BYTES];
    SystemRandom::new()
        .fill(&mut incarnation)
        .map_err(|_| IdentityError::Random)?;
    Ok(incarnation)
}

impl fmt::Display for ClusterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.", self.name)?;
        self.incarnation
            .iter()
            .try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl FromStr for ClusterIdentity {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(text.to_owned());
        let (name, hex) = text.rsplit_once('.').ok_or_else(malformed)?;
        if hex.len() != 2 * INCARNATION_BYTES
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(malformed());
        }
        let mut incarnation = [0u8; INCARNATION_BYTES];
        for (byte, pair) in incarnation.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| malformed())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| malformed())?;
        }
        Self::new(name, incarnation)
    }
}

/// The identity in force and the Raft index of the entry that committed it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct CommittedIdentity {
    /// The identity.
    pub identity: ClusterIdentity,
    /// Index of the entry that committed it.
    pub index: u64,
}

impl CommittedIdentity {
    /// Checks an identity read from a snapshot (rkyv builds it without [`ClusterIdentity::new`]).
    ///
    /// # Errors
    /// [`IdentityError::Name`] for a name that breaks the naming rule.
    pub(crate) fn check(&self) -> Result<(), IdentityError> {
        ClusterIdentity::new(&self.identity.name, self.identity.incarnation).map(drop)
    }
}

/// The identity and what identity command `command` asks for; `None` if it is not a
/// well-formed one (it then goes to the application, like any command it does not know). A
/// replacement carries its stamp; a first identity does not.
pub(crate) fn decode_commit(command: &[u8]) -> Option<(ClusterIdentity, Commit)> {
    let [tag, replace, name_len, rest @ ..] = command else {
        return None;
    };
    if *tag != IDENTITY_TAG {
        return None;
    }
    let name_len = usize::from(*name_len);
    let stamp_len = match replace {
        0 => 0,
        1 => STAMP_BYTES,
        _ => return None,
    };
    if rest.len() != name_len + INCARNATION_BYTES + stamp_len {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let (incarnation, stamp) = rest.split_at(INCARNATION_BYTES);
    let identity = ClusterIdentity::new(
        std::str::from_utf8(name).ok()?,
        incarnation.try_into().ok()?,
    )
    .ok()?;
    let commit = if stamp_len == 0 {
        Commit::First
    } else {
        Commit::Replace {
            stamp_ms: u64::from_le_bytes(stamp.try_into().ok()?),
        }
    };
    Some((identity, commit))
}

/// What applying an identity command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityChange {
    /// The cluster had none: the first identity is in force.
    First,
    /// A replacement put another identity in force.
    Replaced,
    /// Nothing: an identity without `replace` met one in force, or a replacement repeated
    /// the identity in force (a retried proposal), which keeps its index.
    Unchanged,
}

/// Applies an identity command committed at `index` to `current`: first-wins unless a
/// replacement. Returns the identity in force afterwards and what changed.
pub(crate) fn apply(
    current: &mut Option<CommittedIdentity>,
    proposed: ClusterIdentity,
    commit: Commit,
    index: u64,
) -> (CommittedIdentity, IdentityChange) {
    let replace = matches!(commit, Commit::Replace { .. });
    let change = match current {
        None => IdentityChange::First,
        Some(committed) if replace && committed.identity != proposed => IdentityChange::Replaced,
        Some(committed) => return (committed.clone(), IdentityChange::Unchanged),
    };
    let committed = current.insert(CommittedIdentity {
        identity: proposed,
        index,
    });
    (committed.clone(), change)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn identity(name: &str, fill: u8) -> ClusterIdentity {
        ClusterIdentity::new(name, [fill; INCARNATION_BYTES]).unwrap()
    }

    #[test]
    fn names_follow_the_rule() {
        for good in ["keel", "research.eu-1", "A_b-9", &"x".repeat(64)] {
            assert!(ClusterIdentity::new(good, [0; 16]).is_ok(), "{good}");
        }
        for bad in ["", "two words", "naïve", "a/b", &"x".repeat(65)] {
            assert_eq!(
                ClusterIdentity::new(bad, [0; 16]),
                Err(IdentityError::Name(bad.to_owned()))
            );
        }
    }

    #[test]
    fn minted_incarnations_differ() {
        let first = ClusterIdentity::mint("keel").unwrap();
        let second = ClusterIdentity::mint("keel").unwrap();
        assert_eq!(first.name(), "keel");
        assert_ne!(first.incarnation(), second.incarnation());
        assert_ne!(first, second);
    }

    #[test]
    fn text_form_is_name_dot_hex() {
        let mut incarnation = [0u8; 16];
        incarnation[0] = 0x3f;
        incarnation[15] = 0xc1;
        let id = ClusterIdentity::new("research.eu", incarnation).unwrap();
        assert_eq!(
            id.to_string(),
            "research.eu.3f0000000000000000000000000000c1"
        );
        assert_eq!(id.to_string().parse::<ClusterIdentity>().unwrap(), id);
        for bad in [
            "keel",
            "keel.3F0000000000000000000000000000c1",
            "keel.3f00",
            ".3f0000000000000000000000000000c1",
            "keel.+f0000000000000000000000000000c1",
        ] {
            assert!(bad.parse::<ClusterIdentity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_identity_wins_unless_replaced() {
        const REPLACE: Commit = Commit::Replace { stamp_ms: 9 };
        let mut current = None;
        let (first, change) = apply(&mut current, identity("a", 1), Commit::First, 5);
        assert_eq!(change, IdentityChange::First);
        assert_eq!(first.index, 5);
        assert_eq!(first.identity, identity("a", 1));
        let (later, change) = apply(&mut current, identity("a", 2), Commit::First, 9);
        assert_eq!(
            (later, change),
            (first, IdentityChange::Unchanged),
            "a later identity without replace is not applied"
        );
        let (replaced, change) = apply(&mut current, identity("a", 3), REPLACE, 12);
        assert_eq!(change, IdentityChange::Replaced);
        assert_eq!(replaced.identity, identity("a", 3));
        assert_eq!(replaced.index, 12);
        assert_eq!(current, Some(replaced.clone()));
        let (repeated, change) = apply(&mut current, identity("a", 3), REPLACE, 15);
        assert_eq!(
            (repeated, change),
            (replaced, IdentityChange::Unchanged),
            "a retried replacement keeps the index it was first applied at"
        );
    }

    #[test]
    fn an_identity_read_back_is_checked_against_the_naming_rule() {
        let bad = CommittedIdentity {
            identity: ClusterIdentity {
                name: "two words".to_owned(),
                incarnation: [0; 16],
            },
            index: 1,
        };
        assert_eq!(
            bad.check(),
            Err(IdentityError::Name("two words".to_owned()))
        );
        let good = CommittedIdentity {
            identity: identity("keel", 1),
            index: 1,
        };
        assert_eq!(good.check(), Ok(()));
    }

    #[test]
    fn malformed_commands_are_not_identity_commands() {
        let good = identity("keel", 7).commit_command(Commit::First);
        assert_eq!(
            decode_commit(&good),
            Some((identity("keel", 7), Commit::First))
        );
        let mut bad_flag = good.to_vec();
        bad_flag[1] = 2;
        assert_eq!(decode_commit(&bad_flag), None);
        let mut stampless = good.to_vec();
        stampless[1] = 1;
        assert_eq!(
            decode_commit(&stampless),
            None,
            "a replacement needs its stamp"
        );
        assert_eq!(decode_commit(&good[..good.len() - 1]), None, "short");
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode_commit(&long), None, "long");
        let mut bad_name = good.to_vec();
        bad_name[3] = b' ';
        assert_eq!(decode_commit(&bad_name), None, "a name against the rule");
        assert_eq!(decode_commit(&[IDENTITY_TAG]), None);
        assert_eq!(decode_commit(&[]), None);
        let replace = identity("keel", 7).commit_command(Commit::Replace { stamp_ms: 1 << 40 });
        assert_eq!(
            decode_commit(&replace),
            Some((identity("keel", 7), Commit::Replace { stamp_ms: 1 << 40 }))
        );
        assert_eq!(
            decode_commit(&replace[..replace.len() - 1]),
            None,
            "a short stamp"
        );
    }

    proptest! {
        #[test]
        fn commands_round_trip(
            name in "[A-Za-z0-9._-]{1,64}",
            incarnation in proptest::array::uniform16(any::<u8>()),
            stamp in proptest::option::of(any::<u64>()),
        ) {
            let id = ClusterIdentity::new(&name, incarnation).unwrap();
            let commit = stamp.map_or(Commit::First, |stamp_ms| Commit::Replace { stamp_ms });
            prop_assert_eq!(decode_commit(&id.commit_command(commit)), Some((id.clone(), commit)));
            prop_assert_eq!(id.to_string().parse::<ClusterIdentity>().unwrap(), id);
        }
    }
}
