//! Roles, and the role each gRPC method needs.
//!
//! | role     | may call                                                           |
//! |----------|--------------------------------------------------------------------|
//! | `read`   | reads: log reads and subscriptions, status, workflow and timer reads |
//! | `write`  | what `read` may, and writes: append, start, signal, cancel, timers, schedules |
//! | `worker` | what `read` may, and the workers service (leases, journal records)  |
//! | `admin`  | everything but the raft service: also init, membership, repair      |
//! | `node`   | the raft service between nodes (certificates only), and what `write` and `worker` may |
//! | `remote` | the service of calls between clusters, and nothing else — not even reads: its holder is another cluster (its name is the principal) |
//!
//! A method no table names needs `admin`: a new method is closed until someone says who
//! may call it. A node certificate may also write and work (an embedded member's own
//! client and worker present it): denying it would protect nothing, since a node may
//! append any entry through the raft service; it may not administer.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// What an authenticated caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Read,
    /// Reads and writes.
    Write,
    /// Reads and the workers service.
    Worker,
    /// Everything but the raft service.
    Admin,
    /// A cluster member: the raft service, and what `write` and `worker` may.
    Node,
    /// Another cluster calling this one's remote-calls service; nothing else.
    Remote,
}

impl Role {
    /// Every role, each once.
    pub const ALL: [Role; 6] = [
        Role::Read,
        Role::Write,
        Role::Worker,
        Role::Admin,
        Role::Node,
        Role::Remote,
    ];

    /// The role's name, as configuration and certificates spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Worker => "worker",
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Remote => "remote",
        }
    }

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// Whether a caller holding this role may call a method that needs `needed`.
    pub fn permits(self, needed: Role) -> bool {
        match (self, needed) {
            // Another cluster names no one here: it may call only what needs it, and
            // nobody else may (admin and node included).
            (Role::Remote, needed) | (needed, Role::Remote) => needed == Role::Remote,
            (_, Role::Read) => true,
            (Role::Admin, other) => other != Role::Node,
            (Role::Node, other) => other != Role::Admin,
            (held, other) => held == other,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The role each method needs, by gRPC path: `/package.Service/Method` for one method, or
/// `/package.Service/` for every method of a service the table does not name one by one;
/// and the few methods another role may call too.
#[derive(Debug, Clone, Default)]
pub struct MethodRoles {
    needed: HashMap<&'static str, Role>,
    also: HashMap<&'static str, Role>,
}

impl MethodRoles {
    /// A table of `entries`.
    pub fn new(entries: &[(&'static str, Role)]) -> Self {
        Self {
            needed: entries.iter().copied().collect(),
            also: HashMap::new(),
        }
    }

    /// This table, letting `role` call `path` too.
    #[must_use]
    pub fn also(mut self, path: &'static str, role: Role) -> Self {
        self.also.insert(path, role);
        self
    }

    /// This table with `other`'s entries added.
    #[must_use]
    pub fn with(mut self, other: &MethodRoles) -> Self {
        self.needed
            .extend(other.needed.iter().map(|(p, r)| (*p, *r)));
        self.also.extend(other.also.iter().map(|(p, r)| (*p, *r)));
        self
    }

    /// The role `path` needs: its own entry, else its service's, else `admin`.
    pub fn needed(&self, path: &str) -> Role {
        if let Some(role) = self.needed.get(path) {
            return *role;
        }
        let service = path
            .rfind('/')
            .filter(|&slash| slash > 0)
            .map(|slash| &path[..=slash]);
        service
            .and_then(|service| self.needed.get(service))
            .copied()
            .unwrap_or(Role::Admin)
    }

    /// Whether a caller holding `held` may call `path`.
    pub fn allows(&self, path: &str, held: Role) -> bool {
        held.permits(self.needed(path)) || self.also.get(path) == Some(&held)
    }

    /// Whether the table names `path` or its service.
    pub fn names(&self, path: &str) -> bool {
        self.needed.contains_key(path)
            || path
                .rfind('/')
                .is_some_and(|slash| self.needed.contains_key(&path[..=slash]))
    }
}

/// The roles of keel-raft's own services: the raft service and the log client service.
/// `Init` is also a node's: members of a cluster of embedded nodes form it themselves, and
/// `Init` changes only a node that was never initialized.
pub fn raft_method_roles() -> MethodRoles {
    MethodRoles::new(&[
        ("/keel.raft.v2.Raft/", Role::Node),
        ("/keel.client.v2.KeelLog/RegisterSession", Role::Write),
        ("/keel.client.v2.KeelLog/Append", Role::Write),
        ("/keel.client.v2.KeelLog/AppendStream", Role::Write),
        ("/keel.client.v2.KeelLog/Read", Role::Read),
        ("/keel.client.v2.KeelLog/Subscribe", Role::Read),
        ("/keel.client.v2.KeelLog/Status", Role::Read),
        ("/keel.client.v2.KeelLog/Init", Role::Admin),
        ("/keel.client.v2.KeelLog/AddLearner", Role::Admin),
        ("/keel.client.v2.KeelLog/ChangeMembership", Role::Admin),
        ("/keel.client.v2.KeelLog/BuildSnapshot", Role::Admin),
        ("/keel.client.v2.KeelLog/RemintIdentity", Role::Admin),
    ])
    .also("/keel.client.v2.KeelLog/Init", Role::Node)
}

/// The gRPC paths of every `rpc` a `.proto` file's services declare (for tests that check
/// a table names every method).
pub fn proto_methods(proto: &str) -> Vec<String> {
    let package = proto
        .lines()
        .find_map(|line| line.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim().to_owned())
        .unwrap_or_default();
    let mut service = None;
    let mut paths = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().map(str::to_owned);
        } else if let (Some(rest), Some(service)) = (line.strip_prefix("rpc "), &service)
            && let Some(method) = rest.split('(').next()
        {
            paths.push(format!("/{package}.{service}/{}", method.trim()));
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_permit_what_the_table_says() {
        use Role::{Admin, Node, Read, Remote, Worker, Write};
        let permitted = |held: Role| -> Vec<Role> {
            Role::ALL
                .into_iter()
                .filter(|&needed| held.permits(needed))
                .collect()
        };
        assert_eq!(permitted(Read), [Read]);
        assert_eq!(permitted(Write), [Read, Write]);
        assert_eq!(permitted(Worker), [Read, Worker]);
        assert_eq!(permitted(Admin), [Read, Write, Worker, Admin]);
        assert_eq!(permitted(Node), [Read, Write, Worker, Node]);
        assert_eq!(permitted(Remote), [Remote], "not even reads");
        assert!(
            [Read, Write, Worker, Admin, Node]
                .iter()
                .all(|held| !held.permits(Remote)),
            "no role of this cluster calls another cluster's service"
        );
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
    }

    #[test]
    fn every_method_of_the_raft_crates_services_is_named_and_others_need_admin() {
        let roles = raft_method_roles();
        let mut methods = proto_methods(include_str!("../../proto/raft.proto"));
        methods.extend(proto_methods(include_str!("../../proto/client.proto")));
        assert_eq!(methods.len(), 17, "{methods:?}");
        for method in &methods {
            assert!(roles.names(method), "{method} has no role");
        }
        assert_eq!(roles.needed("/keel.raft.v2.Raft/Vote"), Role::Node);
        assert_eq!(roles.needed("/keel.client.v2.KeelLog/Append"), Role::Write);
        assert_eq!(
            roles.needed("/keel.client.v2.KeelLog/ChangeMembership"),
            Role::Admin
        );
        assert_eq!(
            roles.needed("/keel.client.v2.KeelLog/RemintIdentity"),
            Role::Admin
        );
        assert_eq!(
            roles.needed("/keel.client.v2.KeelLog/NewMethod"),
            Role::Admin
        );
        assert_eq!(roles.needed("/grpc.health.v1.Health/Check"), Role::Admin);
        let init = "/keel.client.v2.KeelLog/Init";
        assert!(roles.allows(init, Role::Node) && roles.allows(init, Role::Admin));
        assert!(!roles.allows(init, Role::Write));
        let membership = "/keel.client.v2.KeelLog/ChangeMembership";
        assert!(!roles.allows(membership, Role::Node));
        assert_eq!(roles.needed("garbage"), Role::Admin);
    }
}
