//! Registry flags shared by `pull` and `push`.

use std::path::PathBuf;
use std::time::Duration;

use zstore::registry::auth::Credentials;
use zstore::registry::client::ClientOptions;

#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Require HTTPS with verified certificates (false also allows plain HTTP); loopback
    /// registries always use plain HTTP
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// Credentials file (auth.json format) [default: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Credentials for the registry
    #[arg(long, value_name = "USER[:PASS]")]
    creds: Option<String>,
    /// Seconds without data after which a request fails (and is retried)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Retries of failed requests (connection errors, 5xx, 429)
    #[arg(long, value_name = "N", default_value_t = 4)]
    retries: u32,
}

impl RegistryArgs {
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            tls_verify: self.tls_verify,
            credentials: self.creds.as_deref().map(Credentials::parse),
            timeout: Some(Duration::from_secs(self.timeout.max(1))),
            retries: self.retries,
        }
    }
}
