//! The real registry for tests: the fixtures crate starts it; here a missing tool skips the
//! test locally and fails it in CI.

use std::path::Path;

#[allow(unused_imports)]
pub use zstore_fixtures::registry::{AuthKind, PASS, TestRegistry, USER};

use super::{have, require};

/// Starts a registry, or returns None (after `require`) when a tool it needs is missing.
pub fn start(kind: AuthKind, base: &Path) -> Option<TestRegistry> {
    for (cmd, package) in TestRegistry::needs(kind) {
        if !require(have(cmd), &format!("{cmd} (apt package {package})")) {
            return None;
        }
    }
    zstore::registry::client::install_crypto_provider();
    Some(TestRegistry::start(kind, base))
}
