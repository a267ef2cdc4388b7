//! Configuration: command line and environment, plus a TOML file of service-wide keys and
//! namespaces, validated completely at start so a bad value stops the process with its name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use secrecy::SecretString;
use serde::Deserialize;

use std::num::NonZeroU32;

use ipnet::IpNet;

use crate::domain::namespace::DEFAULT_NAMESPACE;
use crate::domain::{Attributes, Mode, Namespace, OnUserChange, Policy};
use crate::domain::{Retention, StatsNames};
use crate::limits::{LimitSettings, Rate, Scope};
use crate::store::Durability;
use crate::telemetry::LogFormat;

/// sessiond: the single authority for activity-session identifiers.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "SESSIOND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A second address, for /metrics and the admin calls (lookup, events, stats), which are
    /// then served there only; keep it off the public network.
    #[arg(long, env = "SESSIOND_OPS_LISTEN")]
    pub ops_listen: Option<String>,
    /// TOML configuration file (service-wide keys and [namespaces.NAME] tables).
    #[arg(long, env = "SESSIOND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (redis://, rediss:// or redis+unix://); without it (or a cluster) sessions
    /// live in memory.
    #[arg(long, env = "SESSIOND_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated (redis://host:port,...); the rest of the
    /// cluster is discovered.
    #[arg(long, env = "SESSIOND_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Option<Vec<String>>,
    /// Secret keying the client hash; overrides the file's `secret`.
    #[arg(long, env = "SESSIOND_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the secret (a mounted secret, say); trailing whitespace is dropped.
    #[arg(long, env = "SESSIOND_SECRET_FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,
    /// Bearer token the admin calls (lookup, events, stats) require; overrides the file's
    /// `admin_token`.
    #[arg(long, env = "SESSIOND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token; trailing whitespace is dropped.
    #[arg(
        long,
        env = "SESSIOND_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "SESSIOND_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Instead of serving: asks the sessiond listening on --listen for /healthz and exits 0
    /// when it answers 200 (for container health checks, which have no HTTP client).
    #[arg(long)]
    pub check_health: bool,
}

/// What a namespace does when the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// 503 with Retry-After.
    Reject,
    /// A locally drawn id, marked provisional and never stored.
    Provisional,
}

/// One namespace's settings.
#[derive(Debug, Clone)]
pub struct NamespaceSettings {
    pub policy: Policy,
    pub allowed_origins: Vec<String>,
    pub on_store_error: OnStoreError,
    /// The most bytes (UTF-8) one attribute value may take, which bounds what a client
    /// costs the store.
    pub attribute_max_bytes: usize,
}

impl NamespaceSettings {
    pub const DEFAULT_ATTRIBUTE_MAX_BYTES: usize = 128;
}

impl Default for NamespaceSettings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            allowed_origins: Vec::new(),
            on_store_error: OnStoreError::Reject,
            attribute_max_bytes: Self::DEFAULT_ATTRIBUTE_MAX_BYTES,
        }
    }
}

/// Where the sessions are kept. URLs may carry a password, so they are kept out of logs
/// like the secret.
#[derive(Debug, Clone)]
pub enum RedisSettings {
    /// One Redis server.
    Single(SecretString),
    /// The seed nodes of a Redis Cluster.
    Cluster(Vec<SecretString>),
}

/// Which Redis the command line names, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisChoice {
    Url(String),
    Cluster(Vec<String>),
}

/// Everything the service needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    /// Where /metrics and the admin calls are served instead of `listen`, if anywhere.
    pub ops_listen: Option<String>,
    /// Which Redis holds the sessions; none: the in-memory store.
    pub redis: Option<RedisSettings>,
    pub key_prefix: String,
    pub store_timeout: Duration,
    /// Whether a new session is answered only once a Redis replica has it.
    pub durability: Durability,
    pub retention: Retention,
    pub body_limit: usize,
    /// A body must arrive whole within this, else 408 and the connection closes.
    pub body_timeout: Duration,
    /// Concurrent connections the instance accepts at most, and per caller address (a
    /// trusted proxy's connections are not capped); 0: no cap per address.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub max_batch: usize,
    pub min_client_length: usize,
    pub limits: LimitSettings,
    /// None only for the in-memory store, which then draws one per process.
    pub secret: Option<SecretString>,
    /// When set, lookup, events and stats require it as a bearer token.
    pub admin_token: Option<SecretString>,
    /// How often each instance sweeps the store for sessions that idled out.
    pub sweep_interval: Duration,
    pub workers: Option<usize>,
    /// Serves the demo page at /demo.
    pub demo: bool,
    pub namespaces: BTreeMap<Namespace, NamespaceSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A duration written like `30m`, `1500ms`, `24h` or `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        humantime::parse_duration(&raw)
            .map(ConfigDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {raw:?} ({e}); write it like 30m, 1500ms, 24h"
                ))
            })
    }
}

/// Secrets given on the command line or in the environment; they override the file's.
#[derive(Debug, Default)]
pub struct Secrets {
    pub secret: Option<String>,
    pub admin_token: Option<String>,
}

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    store_timeout: Option<ConfigDuration>,
    durability: Option<DurabilityFile>,
    replication_timeout: Option<ConfigDuration>,
    client_retention: Option<ConfigDuration>,
    session_retention: Option<ConfigDuration>,
    body_limit: Option<usize>,
    body_timeout: Option<ConfigDuration>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    max_batch: Option<usize>,
    min_client_length: Option<usize>,
    key_prefix: Option<String>,
    secret: Option<String>,
    admin_token: Option<String>,
    sweep_interval: Option<ConfigDuration>,
    stats_retention: Option<ConfigDuration>,
    events_max_len: Option<usize>,
    stats_max_releases: Option<usize>,
    stats_max_environments: Option<usize>,
    workers: Option<usize>,
    demo: Option<bool>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    namespaces: BTreeMap<String, NamespaceFile>,
}

/// `durability` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DurabilityFile {
    Async,
    Replicated,
    ReplicatedStrict,
}

/// `[limits]`: abuse limits; 0 turns a rate or the cap off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    scope: Option<ScopeFile>,
    shared_window: Option<ConfigDuration>,
    client_per_second: Option<f64>,
    client_burst: Option<u32>,
    address_per_second: Option<f64>,
    address_burst: Option<u32>,
    new_clients_per_address_per_minute: Option<u32>,
    trusted_proxies: Option<Vec<String>>,
    address_header: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ScopeFile {
    Instance,
    Store,
}

impl LimitsFile {
    fn validate(self) -> Result<LimitSettings, ConfigError> {
        fn rate(per_second: f64, burst: u32, name: &str) -> Result<Option<Rate>, ConfigError> {
            if per_second == 0.0 {
                return Ok(None);
            }
            let burst = NonZeroU32::new(burst)
                .ok_or_else(|| invalid(format!("limits.{name}_burst"), "must be at least 1"))?;
            let rate = (per_second > 0.0)
                .then(|| Rate::per_second(per_second, burst))
                .flatten();
            rate.map(Some).ok_or_else(|| {
                invalid(
                    format!("limits.{name}_per_second"),
                    "must be a positive number of calls per second, or 0 for no limit",
                )
            })
        }
        let trusted_proxies = self
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|raw| {
                raw.parse::<IpNet>()
                    .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "limits.trusted_proxies",
                            format!("{raw:?} is not an address or a network like 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let address_header = self
            .address_header
            .unwrap_or_else(|| "x-forwarded-for".into())
            .to_ascii_lowercase();
        if actix_web::http::header::HeaderName::from_bytes(address_header.as_bytes()).is_err() {
            return Err(invalid("limits.address_header", "is not a header name"));
        }
        let shared_window = self.shared_window.map_or(crate::limits::WINDOW, |d| d.0);
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&shared_window) {
            return Err(invalid("limits.shared_window", "must be between 1s and 1h"));
        }
        Ok(LimitSettings {
            shared_window,
            scope: match self.scope.unwrap_or(ScopeFile::Instance) {
                ScopeFile::Instance => Scope::Instance,
                ScopeFile::Store => Scope::Store,
            },
            client: rate(
                self.client_per_second.unwrap_or(10.0),
                self.client_burst.unwrap_or(60),
                "client",
            )?,
            address: rate(
                self.address_per_second.unwrap_or(200.0),
                self.address_burst.unwrap_or(1000),
                "address",
            )?,
            new_clients_per_minute: NonZeroU32::new(
                self.new_clients_per_address_per_minute.unwrap_or(300),
            ),
            trusted_proxies,
            address_header,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceFile {
    idle_timeout: Option<ConfigDuration>,
    max_duration: Option<ConfigDuration>,
    mode: Option<ModeFile>,
    on_user_change: Option<OnUserChangeFile>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    on_store_error: Option<OnStoreError>,
    attribute_max_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ModeFile {
    Inactivity,
    Background,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnUserChangeFile {
    Keep,
    Restart,
}

impl Settings {
    /// Reads the command line's choices and the file they name.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_file(
            file,
            cli.listen.clone(),
            match (&cli.redis_url, &cli.redis_cluster) {
                (Some(url), _) => Some(RedisChoice::Url(url.clone())),
                (None, Some(nodes)) => Some(RedisChoice::Cluster(nodes.clone())),
                (None, None) => None,
            },
            Secrets {
                secret: secret_from(&cli.secret, &cli.secret_file, "secret_file")?,
                admin_token: secret_from(
                    &cli.admin_token,
                    &cli.admin_token_file,
                    "admin_token_file",
                )?,
            },
        )
        .map(|settings| Self {
            ops_listen: cli.ops_listen.clone(),
            ..settings
        })
    }

    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_file(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn from_file(
        file: FileConfig,
        listen: String,
        redis: Option<RedisChoice>,
        secrets: Secrets,
    ) -> Result<Self, ConfigError> {
        let store_timeout = file
            .store_timeout
            .map_or(Duration::from_millis(500), |d| d.0);
        if store_timeout.is_zero() {
            return Err(invalid("store_timeout", "must be more than zero"));
        }
        let replication_timeout = file
            .replication_timeout
            .map_or(Duration::from_millis(100), |d| d.0);
        if replication_timeout.is_zero() || replication_timeout >= store_timeout {
            return Err(invalid(
                "replication_timeout",
                "must be more than zero and less than store_timeout",
            ));
        }
        let durability = match file.durability.unwrap_or(DurabilityFile::Async) {
            DurabilityFile::Async => Durability::Async,
            DurabilityFile::Replicated => Durability::Replicated {
                timeout: replication_timeout,
                strict: false,
            },
            DurabilityFile::ReplicatedStrict => Durability::Replicated {
                timeout: replication_timeout,
                strict: true,
            },
        };
        let defaults = Retention::default();
        let retention = Retention {
            client: file.client_retention.map_or(defaults.client, |d| d.0),
            session: file.session_retention.map_or(defaults.session, |d| d.0),
            stats: file.stats_retention.map_or(defaults.stats, |d| d.0),
            events: file.events_max_len.unwrap_or(defaults.events),
            stats_names: StatsNames {
                releases: file
                    .stats_max_releases
                    .unwrap_or(defaults.stats_names.releases),
                environments: file
                    .stats_max_environments
                    .unwrap_or(defaults.stats_names.environments),
            },
        };
        for (key, cap) in [
            ("stats_max_releases", retention.stats_names.releases),
            ("stats_max_environments", retention.stats_names.environments),
        ] {
            if !(1..=10_000).contains(&cap) {
                return Err(invalid(key, "must be between 1 and 10000"));
            }
        }
        if retention.stats < Duration::from_secs(3600) {
            return Err(invalid("stats_retention", "must be at least 1h"));
        }
        if !(1..=100_000_000).contains(&retention.events) {
            return Err(invalid("events_max_len", "must be between 1 and 100000000"));
        }
        let sweep_interval = file.sweep_interval.map_or(Duration::from_secs(1), |d| d.0);
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&sweep_interval) {
            return Err(invalid("sweep_interval", "must be between 10ms and 60s"));
        }
        let body_limit = file.body_limit.unwrap_or(1024 * 1024);
        if body_limit < 1024 {
            return Err(invalid("body_limit", "must be at least 1024 bytes"));
        }
        let body_timeout = file.body_timeout.map_or(Duration::from_secs(10), |d| d.0);
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&body_timeout) {
            return Err(invalid("body_timeout", "must be between 100ms and 300s"));
        }
        let max_connections = file.max_connections.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid("max_connections", "must be between 1 and 1000000"));
        }
        let max_connections_per_address = file.max_connections_per_address.unwrap_or(256);
        if max_connections_per_address > max_connections {
            return Err(invalid(
                "max_connections_per_address",
                "must be at most max_connections (0: no cap per address)",
            ));
        }
        let max_batch = file.max_batch.unwrap_or(1000);
        if !(1..=10_000).contains(&max_batch) {
            return Err(invalid("max_batch", "must be between 1 and 10000"));
        }
        let min_client_length = file.min_client_length.unwrap_or(16);
        if !(1..=128).contains(&min_client_length) {
            return Err(invalid("min_client_length", "must be between 1 and 128"));
        }
        let limits = file.limits.validate()?;
        let key_prefix = file.key_prefix.unwrap_or_else(|| "sd".into());
        if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "key_prefix",
                "must be non-empty, without braces or spaces",
            ));
        }
        let secret = secrets.secret.or(file.secret);
        let admin_token = secrets.admin_token.or(file.admin_token);
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        if secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("secret", "must be at least 16 characters"));
        }
        let redis = match redis {
            None => None,
            Some(RedisChoice::Url(url)) => Some(RedisSettings::Single(url.into())),
            Some(RedisChoice::Cluster(nodes)) => {
                let nodes: Vec<SecretString> = nodes
                    .iter()
                    .map(|n| n.trim())
                    .filter(|n| !n.is_empty())
                    .map(SecretString::from)
                    .collect();
                if nodes.is_empty() {
                    return Err(invalid(
                        "redis_cluster",
                        "names at least one node, like redis://10.0.0.1:6379",
                    ));
                }
                Some(RedisSettings::Cluster(nodes))
            }
        };
        if redis.is_some() && secret.is_none() {
            // Without a stable secret every restart would orphan every client's sessions.
            return Err(invalid(
                "secret",
                "is required with a Redis store (set SESSIOND_SECRET or `secret` in the file)",
            ));
        }
        if file.workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            Namespace::parse(DEFAULT_NAMESPACE).expect("valid name"),
            NamespaceSettings::default(),
        );
        for (name, ns) in file.namespaces {
            let key = format!("namespaces.{name}");
            let namespace = Namespace::parse(&name).map_err(|e| invalid(&key, e.to_string()))?;
            let settings = ns.validate(&key, &retention)?;
            namespaces.insert(namespace, settings);
        }
        Ok(Self {
            listen,
            ops_listen: None,
            redis,
            key_prefix,
            store_timeout,
            durability,
            retention,
            body_limit,
            body_timeout,
            max_connections,
            max_connections_per_address,
            max_batch,
            min_client_length,
            limits,
            secret: secret.map(SecretString::from),
            admin_token: admin_token.map(SecretString::from),
            sweep_interval,
            workers: file.workers,
            demo: file.demo.unwrap_or(false),
            namespaces,
        })
    }
}

/// A secret given as a value or as a file holding it (the command line forbids both).
fn secret_from(
    value: &Option<String>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = file else {
        return Ok(value.clone());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        // The path may be named; the content never is.
        invalid(key, format!("cannot read {}: {e}", path.display()))
    })?;
    Ok(Some(text.trim_end().to_owned()))
}

impl NamespaceFile {
    fn validate(self, key: &str, retention: &Retention) -> Result<NamespaceSettings, ConfigError> {
        let idle = self.idle_timeout.map_or(Duration::from_secs(1800), |d| d.0);
        if idle < Duration::from_millis(1) {
            return Err(invalid(
                format!("{key}.idle_timeout"),
                "must be at least 1ms",
            ));
        }
        let max = self.max_duration.map(|d| d.0);
        if max.is_some_and(|m| m < Duration::from_millis(1)) {
            return Err(invalid(
                format!("{key}.max_duration"),
                "must be at least 1ms",
            ));
        }
        let mode = match self.mode.unwrap_or(ModeFile::Inactivity) {
            ModeFile::Inactivity => Mode::Inactivity,
            ModeFile::Background => Mode::Background,
        };
        if mode == Mode::Background && max.is_none() {
            return Err(invalid(
                format!("{key}.max_duration"),
                "is required when mode = \"background\" (a foregrounded session never idles out)",
            ));
        }
        let longest = max.unwrap_or(idle).max(idle);
        if retention.client < longest {
            return Err(invalid(
                "client_retention",
                format!("must be at least {key}'s idle_timeout and max_duration"),
            ));
        }
        for origin in &self.allowed_origins {
            if !valid_origin(origin) {
                return Err(invalid(
                    format!("{key}.allowed_origins"),
                    format!("{origin:?} is not an origin like https://example.org or \"*\""),
                ));
            }
        }
        let on_store_error = self.on_store_error.unwrap_or(OnStoreError::Reject);
        let attribute_max_bytes = self
            .attribute_max_bytes
            .unwrap_or(NamespaceSettings::DEFAULT_ATTRIBUTE_MAX_BYTES);
        // A value is at most Attributes::MAX_LEN characters of up to 4 bytes each anyway.
        if !(1..=4 * Attributes::MAX_LEN).contains(&attribute_max_bytes) {
            return Err(invalid(
                format!("{key}.attribute_max_bytes"),
                format!("must be 1 to {}", 4 * Attributes::MAX_LEN),
            ));
        }
        Ok(NamespaceSettings {
            policy: Policy {
                idle_timeout_ms: idle.as_millis() as i64,
                max_duration_ms: max.map(|m| m.as_millis() as i64),
                mode,
                on_user_change: match self.on_user_change.unwrap_or(OnUserChangeFile::Keep) {
                    OnUserChangeFile::Keep => OnUserChange::Keep,
                    OnUserChangeFile::Restart => OnUserChange::Restart,
                },
            },
            allowed_origins: self.allowed_origins,
            on_store_error,
            attribute_max_bytes,
        })
    }
}

/// `*`, or scheme://host[:port] with no path, as browsers send in the Origin header.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, String> {
        let file = Settings::parse_file(text).map_err(|e| e.to_string())?;
        Settings::from_file(file, "127.0.0.1:0".into(), None, Secrets::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn without_a_file_there_is_one_default_namespace_with_the_contract_defaults() {
        let s = load("").unwrap();
        assert_eq!(s.namespaces.len(), 1);
        let default = &s.namespaces[&Namespace::parse("default").unwrap()];
        assert_eq!(default.policy, Policy::default());
        assert_eq!(s.store_timeout, Duration::from_millis(500));
        assert_eq!(s.body_limit, 1024 * 1024);
    }

    #[test]
    fn namespaces_take_durations_modes_and_origins() {
        let s = load(
            r#"
            [namespaces.ios]
            idle_timeout = "1500ms"
            max_duration = "24h"
            mode = "background"
            on_user_change = "restart"
            allowed_origins = ["https://example.org"]
            "#,
        )
        .unwrap();
        let ios = &s.namespaces[&Namespace::parse("ios").unwrap()];
        assert_eq!(ios.policy.idle_timeout_ms, 1500);
        assert_eq!(ios.policy.max_duration_ms, Some(24 * 3600 * 1000));
        assert_eq!(ios.policy.mode, Mode::Background);
        assert_eq!(ios.policy.on_user_change, OnUserChange::Restart);
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let err = load("[namespaces.web]\nidle_timeout = \"30x\"").unwrap_err();
        assert!(err.contains("idle_timeout"), "{err}");
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn an_unknown_key_names_itself() {
        let err = load("[namespaces.web]\nidle_timout = \"30m\"").unwrap_err();
        assert!(err.contains("idle_timout"), "{err}");
    }

    #[test]
    fn background_mode_requires_max_duration() {
        let err = load("[namespaces.ios]\nmode = \"background\"").unwrap_err();
        assert!(err.contains("namespaces.ios.max_duration"), "{err}");
    }

    #[test]
    fn origins_must_be_origins() {
        let err = load("[namespaces.web]\nallowed_origins = [\"https://a.org/path\"]").unwrap_err();
        assert!(err.contains("namespaces.web.allowed_origins"), "{err}");
    }

    #[test]
    fn a_bad_namespace_name_is_named() {
        let err = load("[namespaces.Web]\n").unwrap_err();
        assert!(err.contains("namespaces.Web"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let example = load(include_str!("../deploy/sessiond.example.toml")).unwrap();
        let defaults = load("").unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn durability_is_named_and_its_wait_stays_within_the_store_timeout() {
        assert_eq!(load("").unwrap().durability, Durability::Async);
        let s = load("durability = \"replicated-strict\"\nreplication_timeout = \"50ms\"").unwrap();
        assert_eq!(
            s.durability,
            Durability::Replicated {
                timeout: Duration::from_millis(50),
                strict: true
            }
        );
        let err = load("durability = \"sync\"").unwrap_err();
        assert!(err.contains("durability"), "{err}");
        let err = load("replication_timeout = \"1s\"").unwrap_err();
        assert!(err.contains("`replication_timeout`"), "{err}");
    }

    #[test]
    fn health_keys_are_read_and_checked() {
        let s = load(
            "sweep_interval = \"250ms\"\nstats_retention = \"7d\"\nevents_max_len = 5000\nadmin_token = \"0123456789abcdef\"",
        )
        .unwrap();
        assert_eq!(s.sweep_interval, Duration::from_millis(250));
        assert_eq!(s.retention.stats, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(s.retention.events, 5000);
        assert!(s.admin_token.is_some());
        let err = load("admin_token = \"short\"").unwrap_err();
        assert!(err.contains("`admin_token`"), "{err}");
        let err = load("sweep_interval = \"0s\"").unwrap_err();
        assert!(err.contains("`sweep_interval`"), "{err}");
    }

    #[test]
    fn storage_and_limit_keys_are_read_and_checked() {
        let s = load(
            "stats_max_releases = 5\nstats_max_environments = 2\n[limits]\nscope = \"store\"\n\
             shared_window = \"30s\"\n[namespaces.web]\nattribute_max_bytes = 64",
        )
        .unwrap();
        assert_eq!(
            (
                s.retention.stats_names.releases,
                s.retention.stats_names.environments
            ),
            (5, 2)
        );
        assert_eq!(s.limits.scope, Scope::Store);
        assert_eq!(s.limits.shared_window, Duration::from_secs(30));
        let web = Namespace::parse("web").unwrap();
        assert_eq!(s.namespaces[&web].attribute_max_bytes, 64);
        for (bad, key) in [
            ("stats_max_releases = 0", "stats_max_releases"),
            ("stats_max_environments = 20000", "stats_max_environments"),
            ("[limits]\nscope = \"cluster\"", "scope"),
            (
                "[limits]\nshared_window = \"100ms\"",
                "limits.shared_window",
            ),
            (
                "[namespaces.web]\nattribute_max_bytes = 1025",
                "namespaces.web.attribute_max_bytes",
            ),
        ] {
            let err = load(bad).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn a_redis_cluster_names_its_nodes_and_needs_a_secret() {
        let cluster = |nodes: &[&str], secret: Option<&str>| {
            Settings::from_file(
                FileConfig::default(),
                "x".into(),
                Some(RedisChoice::Cluster(
                    nodes.iter().map(|n| n.to_string()).collect(),
                )),
                Secrets {
                    secret: secret.map(str::to_owned),
                    admin_token: None,
                },
            )
        };
        let ok = cluster(
            &["redis://a:6379", " redis://b:6379 "],
            Some("0123456789abcdef"),
        )
        .unwrap();
        assert!(matches!(ok.redis, Some(RedisSettings::Cluster(ref n)) if n.len() == 2));
        let err = cluster(&["", " "], Some("0123456789abcdef")).unwrap_err();
        assert!(err.to_string().contains("`redis_cluster`"), "{err}");
        let err = cluster(&["redis://a:6379"], None).unwrap_err();
        assert!(err.to_string().contains("`secret`"), "{err}");
    }

    #[test]
    fn a_redis_store_requires_a_secret() {
        let err = Settings::from_file(
            FileConfig::default(),
            "x".into(),
            Some(RedisChoice::Url("redis://h".into())),
            Secrets::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`secret`"), "{err}");
    }

    #[test]
    fn secrets_are_read_from_files_without_their_trailing_newline() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let token = dir.path().join("token");
        std::fs::write(&secret, "a-secret-from-a-mounted-file\n").unwrap();
        std::fs::write(&token, "an-admin-token-from-a-file\n").unwrap();
        let cli = Cli::parse_from([
            "sessiond".as_ref(),
            "--redis-url".as_ref(),
            "redis://h".as_ref(),
            "--secret-file".as_ref(),
            secret.as_os_str(),
            "--admin-token-file".as_ref(),
            token.as_os_str(),
        ]);
        let settings = Settings::load(&cli).unwrap();
        let exposed = settings.secret.as_ref().unwrap().expose_secret();
        assert_eq!(exposed, "a-secret-from-a-mounted-file");
        let exposed = settings.admin_token.as_ref().unwrap().expose_secret();
        assert_eq!(exposed, "an-admin-token-from-a-file");
        // Neither value may reach a log line through Debug.
        let printed = format!("{settings:?}");
        assert!(!printed.contains("mounted-file") && !printed.contains("admin-token-from"));

        let missing = dir.path().join("missing");
        let cli = Cli::parse_from([
            "sessiond".as_ref(),
            "--secret-file".as_ref(),
            missing.as_os_str(),
        ]);
        let err = Settings::load(&cli).unwrap_err().to_string();
        assert!(
            err.contains("`secret_file`") && err.contains("missing"),
            "{err}"
        );
    }
}
