//! etcd's own access control for a cronmesh cluster (`cronmesh admin etcd-roles`): a master
//! role and a worker role, each limited to the key ranges it needs under the cluster's prefix.
//! A worker's credentials can register, claim and mark ticks, and take run requests, but cannot
//! write `jobs/` (nor anything else a master keeps).

use super::{Coord, CoordError, Keys, prefix_end};
use etcd_client::{Permission, PermissionType};

/// One permission of a role: `read` or `readwrite` on every key starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub write: bool,
    pub prefix: String,
    /// Why the role needs it.
    pub why: &'static str,
}

/// A role and its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    pub name: String,
    pub grants: Vec<Grant>,
}

/// The roles of a cluster: `{base}-master` and `{base}-worker`.
pub fn roles(keys: &Keys, base: &str) -> Vec<RoleSpec> {
    let g = |write, prefix: String, why| Grant { write, prefix, why };
    vec![
        RoleSpec {
            name: format!("{base}-master"),
            grants: vec![g(
                true,
                keys.prefix().to_string(),
                "masters keep jobs, the ledger, backfills, dependencies, notifications and the feed relay",
            )],
        },
        RoleSpec {
            name: format!("{base}-worker"),
            grants: vec![
                g(
                    false,
                    keys.prefix().to_string(),
                    "workers read jobs, members, claims and signals",
                ),
                g(true, keys.workers(), "its registration (under its session lease)"),
                g(true, keys.claims(), "claims of ticks"),
                g(true, keys.running_all(), "running marks (forbid, buffer jobs)"),
                g(true, keys.buffers(), "buffered ticks (buffer jobs)"),
                g(true, keys.signals(), "taking run requests, kill signals (replace jobs)"),
            ],
        },
    ]
}

impl RoleSpec {
    /// The same as `etcdctl` commands, for operators who apply roles by hand.
    pub fn etcdctl(&self) -> Vec<String> {
        let mut out = vec![format!("etcdctl role add {}", self.name)];
        for g in &self.grants {
            out.push(format!(
                "etcdctl role grant-permission {} --prefix=true {} {}    # {}",
                self.name,
                if g.write { "readwrite" } else { "read" },
                g.prefix,
                g.why
            ));
        }
        out
    }
}

impl Coord {
    /// Creates the roles (an existing role keeps its other grants and gains these) and grants
    /// each to its users, creating a user with `password` when it does not exist. Returns what
    /// was done, a line each. Needs a user with etcd's `root` role (or auth not yet enabled).
    pub async fn apply_roles(
        &self,
        roles: &[RoleSpec],
        users: &[(String, String, Option<String>)],
    ) -> Result<Vec<String>, CoordError> {
        let mut done = Vec::new();
        let existing: Vec<String> = self
            .call("role_list", |mut c| async move { c.role_list().await })
            .await?
            .roles()
            .to_vec();
        for r in roles {
            if !existing.contains(&r.name) {
                let name = r.name.clone();
                self.call("role_add", |mut c| async move { c.role_add(name).await })
                    .await?;
                done.push(format!("role {} created", r.name));
            }
            for g in &r.grants {
                let kind = if g.write {
                    PermissionType::Readwrite
                } else {
                    PermissionType::Read
                };
                let perm = Permission::new(kind, g.prefix.clone()).with_range_end(prefix_end(g.prefix.as_bytes()));
                let name = r.name.clone();
                self.call("role_grant_permission", |mut c| async move {
                    c.role_grant_permission(name, perm).await
                })
                .await?;
                done.push(format!(
                    "role {}: {} {}",
                    r.name,
                    if g.write { "readwrite" } else { "read" },
                    g.prefix
                ));
            }
        }
        let known: Vec<String> = self
            .call("user_list", |mut c| async move { c.user_list().await })
            .await?
            .users()
            .to_vec();
        for (user, role, password) in users {
            if !known.contains(user) {
                let Some(pw) = password.clone() else {
                    return Err(CoordError::Conflict(format!(
                        "user {user:?} does not exist in etcd; give its password to create it"
                    )));
                };
                let u = user.clone();
                self.call("user_add", |mut c| async move { c.user_add(u, pw, None).await })
                    .await?;
                done.push(format!("user {user} created"));
            }
            let (u, r) = (user.clone(), role.clone());
            self.call("user_grant_role", |mut c| async move { c.user_grant_role(u, r).await })
                .await?;
            done.push(format!("user {user}: role {role}"));
        }
        Ok(done)
    }

    /// Turns etcd's authentication on: user `root` (created with `root_password` when absent)
    /// gets role `root`, then `auth enable`. From then on every client needs a user.
    pub async fn enable_auth(&self, root_password: &str) -> Result<Vec<String>, CoordError> {
        let mut done = Vec::new();
        let known: Vec<String> = self
            .call("user_list", |mut c| async move { c.user_list().await })
            .await?
            .users()
            .to_vec();
        if !known.iter().any(|u| u == "root") {
            let pw = root_password.to_string();
            self.call("user_add", |mut c| async move { c.user_add("root", pw, None).await })
                .await?;
            done.push("user root created".to_string());
        }
        self.call("user_grant_role", |mut c| async move {
            c.user_grant_role("root", "root").await
        })
        .await?;
        self.call("auth_enable", |mut c| async move { c.auth_enable().await })
            .await?;
        done.push("authentication enabled".to_string());
        Ok(done)
    }
}
