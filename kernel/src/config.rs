//! Server configuration: TOML, parsed with serde.
//!
//! ```toml
//! [server]
//! threads = 1                  # reactor threads; 0 or absent: one per core
//!
//! [instances.memory]           # an instance named "memory"
//! module = "driver.memqueue"   # of the module class.name
//! bind = ["/queues/"]          # keys in the driver class's table
//!
//! [instances.memory.config]    # opaque to the kernel: the module parses it
//! max_depth = 10000
//! ```
//!
//! The kernel reads `[server]` and each instance's `module` and `bind`; an
//! instance's `config` table is handed to its module as a [`Section`], which
//! the module deserializes into its own type (rejecting unknown fields with
//! `#[serde(deny_unknown_fields)]`). Every error names the file, the line and
//! column, the instance and the field; a mistyped field gets the closest
//! known one suggested (``unknown field `thread`, expected `threads` or
//! `data_dir`; did you mean `threads`?``).
//!
//! # The data directory
//!
//! `[server] data_dir` (default [`DEFAULT_DATA_DIR`], `bindery-data` in the
//! working directory) is where the server's durable data lives. The kernel
//! knows no module's files: a module resolves each of its own path fields
//! with [`crate::InstanceContext::resolve`], which leaves an absolute path
//! as it is and puts a relative one under the data directory.
//!
//! Longer than most files here: parsing, the error positions and their
//! tests; the error shapes are the point of the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A configuration error, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The instance the error is in, if any.
    pub instance: Option<String>,
    /// What is wrong (serde's message names the field).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(i) = &self.instance {
            write!(f, ": instance {i:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The text a configuration came from.
#[derive(Debug)]
pub struct Source {
    name: String,
    text: String,
}

impl Source {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = offset
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        (line, col)
    }

    fn error(&self, instance: Option<&str>, e: toml::de::Error) -> ConfigError {
        ConfigError {
            file: self.name.clone(),
            position: e.span().map(|s| self.position(s.start)),
            instance: instance.map(str::to_owned),
            message: with_suggestion(e.message().trim_end()),
        }
    }

    /// The position of `[instances.NAME]`, for errors that toml cannot place.
    fn instance_position(&self, name: &str) -> Option<(usize, usize)> {
        let header = format!("[instances.{name}");
        self.text.find(&header).map(|o| self.position(o))
    }
}

/// serde's "unknown field `x`, expected `a`, `b`", with "; did you mean
/// `a`?" when one expected field is close to `x`.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    // The expected names are the backquoted words after the field.
    let names = expected.split('`').skip(1).step_by(2);
    let hint = crate::suggest::did_you_mean(field, names, |c| format!("`{c}`"));
    format!("{message}{hint}")
}

/// Where durable data lives when neither `[server] data_dir` nor the
/// command line says: `bindery-data`, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "bindery-data";

/// The `[server]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Reactor threads; `None` or 0: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Log lines kept per instance for the management API (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_lines: Option<usize>,
    /// The data directory: a module's relative data paths (a durable
    /// queue's `dir`, the management token file) resolve under it (see
    /// [`crate::InstanceContext::resolve`]). `None`: [`DEFAULT_DATA_DIR`].
    /// A relative directory is relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    instances: BTreeMap<String, RawInstance>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    module: String,
    #[serde(default)]
    bind: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // read again by `Section::parse`
    config: Option<IgnoredAny>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    isolation: Isolation,
    #[serde(default)]
    restart: Option<Restart>,
    #[serde(default)]
    backoff_base_ms: Option<u64>,
    #[serde(default)]
    backoff_cap_ms: Option<u64>,
    #[serde(default)]
    crash_loop_limit: Option<u32>,
    #[serde(default)]
    host: Option<HostSection>,
}

impl RawInstance {
    /// The isolation settings, or why they do not go together.
    fn isolation(&self) -> Result<IsolationSpec, &'static str> {
        let spec = IsolationSpec {
            mode: self.isolation,
            restart: self.restart,
            backoff_base_ms: self.backoff_base_ms,
            backoff_cap_ms: self.backoff_cap_ms,
            crash_loop_limit: self.crash_loop_limit,
            host: self.host.clone().map(Box::new),
        };
        let supervised = spec.restart.is_some()
            || spec.backoff_base_ms.is_some()
            || spec.backoff_cap_ms.is_some()
            || spec.crash_loop_limit.is_some()
            || spec.host.is_some();
        if spec.mode == Isolation::None && supervised {
            return Err(
                "`restart`, `backoff_base_ms`, `backoff_cap_ms`, `crash_loop_limit` \
                 and `[host]` apply only with isolation = \"process\"",
            );
        }
        if spec.backoff_base_ms == Some(0) {
            return Err("`backoff_base_ms` must be at least 1");
        }
        if spec.backoff_cap() < spec.backoff_base() {
            return Err("`backoff_cap_ms` must be at least `backoff_base_ms`");
        }
        let host = spec.host();
        match host.activation.unwrap_or_default() {
            Activation::Fork if host.connect.is_some() || host.secret_file.is_some() => {
                return Err("[host] `connect` and `secret_file` need activation = \"none\"");
            }
            Activation::None if host.connect.is_none() || host.secret_file.is_none() => {
                return Err("[host] activation = \"none\" needs `connect` (the host's \
                     address) and `secret_file` (the shared secret)");
            }
            Activation::None
                if host.program.is_some()
                    || host.memory_bytes.is_some()
                    || host.open_files.is_some() =>
            {
                return Err(
                    "[host] `program`, `memory_bytes` and `open_files` apply only to \
                     a host the server starts (activation = \"fork\")",
                );
            }
            _ => {}
        }
        Ok(spec)
    }
}

fn yes() -> bool {
    true
}

/// One instance: a module, its keys and its configuration section.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The instance's name (its table's name under `[instances]`).
    pub name: String,
    /// `class.name` of the module it instantiates.
    pub module: String,
    /// The keys it is bound to in its class's table.
    pub bind: Vec<String>,
    /// Its configuration section, for the module to parse.
    pub section: Section,
    /// Where it runs and how it is restarted when it fails.
    pub isolation: IsolationSpec,
}

/// Where an instance runs: `isolation = "none"` (default) or `"process"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// In the server's process, as a plain object.
    #[default]
    None,
    /// In a host process of its own, behind a proxy (see
    /// `docs/isolation.md`). Only classes whose `register` helper has a
    /// proxy accept it.
    Process,
}

/// When a failed instance is started again: `restart = ...`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never: it stays `failed` until started by hand.
    Never,
    /// When it ended in failure (a host killed, aborted or exiting
    /// non-zero), with backoff and a crash-loop limit.
    #[default]
    OnFailure,
    /// Whenever it ended without being asked to (a clean exit too).
    Always,
}

/// Backoff before the first automatic restart, by default.
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 100;
/// The longest backoff between automatic restarts, by default.
pub const DEFAULT_BACKOFF_CAP_MS: u64 = 30_000;
/// Crashes in a row after which an instance is left failed, by default.
pub const DEFAULT_CRASH_LOOP_LIMIT: u32 = 5;

/// An instance's isolation and restart settings, as written (absent
/// fields are `None` and take the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IsolationSpec {
    /// `isolation`.
    #[serde(rename = "isolation")]
    pub mode: Isolation,
    /// `restart` (default `on-failure`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// `backoff_base_ms`: the wait before the first restart after a
    /// crash; it doubles with each crash in a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    /// `backoff_cap_ms`: the longest wait. A run that lasted longer than
    /// this before it crashed ends the crash loop (the count starts over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_cap_ms: Option<u64>,
    /// `crash_loop_limit`: automatic restarts in a row after which the
    /// instance stays `failed` (its `last_error` says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_loop_limit: Option<u32>,
    /// `[instances.NAME.host]`: how the host process is run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Box<HostSection>>,
}

impl IsolationSpec {
    /// The restart policy in effect.
    pub fn restart(&self) -> Restart {
        self.restart.unwrap_or_default()
    }

    /// The first backoff.
    pub fn backoff_base(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.backoff_base_ms.unwrap_or(DEFAULT_BACKOFF_BASE_MS))
    }

    /// The longest backoff.
    pub fn backoff_cap(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.backoff_cap_ms.unwrap_or(DEFAULT_BACKOFF_CAP_MS))
    }

    /// The crash-loop limit in effect.
    pub fn crash_loop_limit(&self) -> u32 {
        self.crash_loop_limit.unwrap_or(DEFAULT_CRASH_LOOP_LIMIT)
    }

    /// The backoff before the restart that follows crash number `crashes`
    /// in a row (1 for the first): base, doubled each time, capped.
    pub fn backoff(&self, crashes: u32) -> std::time::Duration {
        let doubled = self
            .backoff_base()
            .saturating_mul(1u32 << crashes.saturating_sub(1).min(20));
        doubled.min(self.backoff_cap())
    }

    /// The host settings in effect.
    pub fn host(&self) -> HostSection {
        self.host.as_deref().cloned().unwrap_or_default()
    }
}

/// How an isolated instance's host comes to be: `[host] activation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The server starts the host (its own binary) and waits for its hello.
    #[default]
    Fork,
    /// The host was started by something else (`bindery host --listen`,
    /// maybe on another machine); the server connects to it over TCP and
    /// proves the shared secret before anything is served.
    None,
}

/// `[instances.NAME.host]`: how an isolated instance's host runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// `fork` (default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// With activation `none`: the host's TCP address (`10.0.0.7:7400`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// With activation `none`: a file holding the shared secret (relative
    /// to the data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The executable to run as the host (default: this server's own
    /// binary, which links the same modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<PathBuf>,
    /// How long the server waits for the host's hello and the instance
    /// to be made (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_ms: Option<u64>,
    /// A host that answers no ping within this is hung: it is killed (or,
    /// activation `none`, disconnected) and handled as a crash (default
    /// 10000; 0: never pinged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang_timeout_ms: Option<u64>,
    /// Address-space limit of the host in bytes (`RLIMIT_AS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Open-file limit of the host (`RLIMIT_NOFILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

/// A parsed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    source: Arc<Source>,
    /// The `[server]` table.
    pub server: ServerSection,
    /// The enabled instances, sorted by name.
    pub instances: Vec<InstanceSpec>,
}

impl Config {
    /// Parses configuration text; `name` is what errors call the file.
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let source = Arc::new(Source {
            name: name.to_owned(),
            text: text.to_owned(),
        });
        let raw: RawConfig = toml::from_str(text).map_err(|e| source.error(None, e))?;
        let mut instances = Vec::new();
        for (name, r) in raw.instances.into_iter().filter(|(_, r)| r.enabled) {
            let isolation = r.isolation().map_err(|why| ConfigError {
                file: source.name.clone(),
                position: source.instance_position(&name),
                instance: Some(name.clone()),
                message: why.to_owned(),
            })?;
            instances.push(InstanceSpec {
                section: Section {
                    source: source.clone(),
                    instance: name.clone(),
                },
                name,
                module: r.module,
                bind: r.bind,
                isolation,
            });
        }
        Ok(Config {
            source,
            server: raw.server,
            instances,
        })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            position: None,
            instance: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&name, &text)
    }

    /// The data directory: `[server] data_dir`, or [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self) -> &Path {
        self.server
            .data_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }

    /// The file name errors use.
    pub fn name(&self) -> &str {
        &self.source.name
    }

    /// The instance called `name`.
    pub fn instance_mut(&mut self, name: &str) -> Option<&mut InstanceSpec> {
        self.instances.iter_mut().find(|i| i.name == name)
    }

    /// An error about instance `instance`, placed at its header.
    pub fn instance_error(&self, instance: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.name.clone(),
            position: self.source.instance_position(instance),
            instance: Some(instance.to_owned()),
            message: message.into(),
        }
    }
}

/// An instance's `config` table, opaque to the kernel.
#[derive(Debug, Clone)]
pub struct Section {
    source: Arc<Source>,
    instance: String,
}

impl Section {
    /// Deserializes the section into the module's configuration type.
    ///
    /// An absent section deserializes from an empty table, so a type whose
    /// fields all have defaults needs no section. Errors carry the file, line,
    /// column, instance and serde's message (which names the field).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let mut out = None;
        let seed = Pick::<T> {
            path: &["instances", &self.instance, "config"],
            out: &mut out,
        };
        let de = toml::Deserializer::new(&self.source.text);
        seed.deserialize(de)
            .map_err(|e| self.source.error(Some(&self.instance), e))?;
        match out {
            Some(v) => Ok(v),
            None => {
                T::deserialize(toml::Value::Table(toml::Table::new())).map_err(|e| ConfigError {
                    file: self.source.name.clone(),
                    position: self.source.instance_position(&self.instance),
                    instance: Some(self.instance.clone()),
                    message: format!("[instances.{}.config]: {}", self.instance, e.message()),
                })
            }
        }
    }

    /// The instance this section belongs to.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The section as TOML, `None` when the instance has none.
    pub fn value(&self) -> Option<toml::Value> {
        let doc: toml::Table = self.source.text.parse().ok()?;
        doc.get("instances")?
            .get(&self.instance)?
            .get("config")
            .cloned()
    }
}

/// Walks a document along `path`, ignoring everything else, and deserializes
/// the value found there, so errors keep the document's spans.
struct Pick<'a, T> {
    path: &'a [&'a str],
    out: &'a mut Option<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Pick<'_, T> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Pick<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Pick { path, out } = self;
        while let Some(key) = map.next_key::<String>()? {
            if key != path[0] {
                map.next_value::<IgnoredAny>()?;
            } else if path.len() == 1 {
                *out = Some(map.next_value::<T>()?);
            } else {
                map.next_value_seed(Pick {
                    path: &path[1..],
                    out: &mut *out,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Mine {
        depth: u32,
        #[serde(default)]
        name: String,
    }

    const TEXT: &str = r#"
[server]
threads = 2

[instances.a]
module = "driver.x"
bind = ["/a/"]

[instances.a.config]
depth = 3

[instances.b]
module = "driver.x"
bind = ["/b/"]
config = { depth = 1, colour = "red" }

[instances.c]
module = "driver.x"
"#;

    #[test]
    fn sections_parse_into_the_module_type() {
        let c = Config::parse("test.toml", TEXT).unwrap();
        assert_eq!(c.server.threads, Some(2));
        let names: Vec<_> = c.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a: Mine = c.instances[0].section.parse().unwrap();
        assert_eq!(
            a,
            Mine {
                depth: 3,
                name: String::new()
            }
        );
    }

    #[test]
    fn unknown_field_names_file_line_instance_and_field() {
        let c = Config::parse("test.toml", TEXT).unwrap();
        let e = c.instances[1].section.parse::<Mine>().unwrap_err();
        assert_eq!(e.file, "test.toml");
        assert_eq!(e.instance.as_deref(), Some("b"));
        assert_eq!(e.position.map(|p| p.0), Some(15), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        assert!(e.to_string().starts_with("test.toml:15:"), "{e}");
    }

    #[test]
    fn missing_section_with_required_field_is_placed_at_the_instance() {
        let c = Config::parse("test.toml", TEXT).unwrap();
        let e = c.instances[2].section.parse::<Mine>().unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(17), "{e}");
        assert!(e.message.contains("depth"), "{e}");
    }

    #[test]
    fn malformed_documents_name_the_line() {
        let e = Config::parse("bad.toml", "[server]\nthreads = \"two\"\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(2), "{e}");
        let e = Config::parse("bad.toml", "[instances.x]\nmodul = \"a.b\"\n").unwrap_err();
        assert!(e.message.contains("modul"), "{e}");
        let e = Config::parse("bad.toml", "[instances.x\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(1), "{e}");
    }

    #[test]
    fn a_mistyped_field_gets_the_closest_suggested() {
        let e = Config::parse("s.toml", "[server]\nthread = 2\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.toml:2:1: unknown field `thread`, expected one of `threads`, `log_lines`, \
             `data_dir`; did you mean `threads`?"
        );
        let c = Config::parse("t.toml", TEXT).unwrap();
        let e = c.instances[1].section.parse::<Mine>().unwrap_err();
        assert!(!e.message.contains("did you mean"), "{e}");
        let e = Config::parse("t.toml", "[instances.x]\nmodul = \"a.b\"\n").unwrap_err();
        assert!(e.message.ends_with("; did you mean `module`?"), "{e}");
    }

    #[test]
    fn the_data_directory_defaults_to_bindery_data() {
        let c = Config::parse("t", "").unwrap();
        assert_eq!(c.data_dir(), Path::new("bindery-data"));
        let c = Config::parse("t", "[server]\ndata_dir = \"/var/lib/b\"\n").unwrap();
        assert_eq!(c.data_dir(), Path::new("/var/lib/b"));
    }

    #[test]
    fn disabled_instances_are_left_out() {
        let c = Config::parse("t", "[instances.x]\nmodule = \"a.b\"\nenabled = false\n").unwrap();
        assert!(c.instances.is_empty());
    }
}
