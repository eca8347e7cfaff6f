//! The kernel's one error type.

use std::fmt;
use std::sync::Arc;

/// A boxed error from a module: what module mains, factories and start hooks
/// return when they fail.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can stop a kernel from being built or started.
///
/// Every variant names the thing at fault: the module (class, name and
/// crate), the instance, the key, or the configuration file and line.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A module named in the main file's list is not in the link-time slice.
    ModuleMissing {
        /// `class.name` of the missing module.
        module: String,
        /// The crate that declares it.
        krate: &'static str,
    },
    /// Two linked modules claim the same class and name.
    DuplicateModule {
        /// `class.name` both claim.
        module: String,
        /// The crate of the first claimant.
        first: &'static str,
        /// The crate of the second claimant.
        second: &'static str,
    },
    /// A module was built against another kernel ABI version.
    AbiMismatch {
        /// `class.name` of the module.
        module: String,
        /// The crate that declares it.
        krate: &'static str,
        /// The ABI the module was built against.
        found: u32,
        /// The ABI of this kernel.
        expected: u32,
    },
    /// A module's main function failed.
    ModuleMain {
        /// `class.name` of the module.
        module: String,
        /// The module's reason.
        cause: Arc<BoxError>,
    },
    /// The configuration is malformed or inconsistent.
    Config(crate::config::ConfigError),
    /// An instance's factory or start hook failed.
    Instance {
        /// The instance's name.
        instance: String,
        /// `class.name` of its module.
        module: String,
        /// The module's reason.
        cause: Arc<BoxError>,
    },
    /// A binding could not be made.
    Binding {
        /// The class whose table refused it.
        class: String,
        /// The key as written.
        key: String,
        /// Why.
        reason: String,
    },
    /// An instance names a module this binary does not link.
    NotLinked {
        /// The instance.
        instance: String,
        /// The `class.name` it asked for.
        module: String,
        /// What is linked, sorted.
        linked: Vec<String>,
    },
    /// No instance has that name.
    NoInstance {
        /// The name asked for.
        instance: String,
    },
    /// An instance of that name exists already.
    InstanceExists {
        /// The name.
        instance: String,
    },
    /// A change would remove or change an instance that must stay as it is
    /// (the management API serving the request).
    Protected {
        /// The instance.
        instance: String,
    },
    /// The server is stopping: no instance changes any more.
    Stopping,
    /// The configuration changed since the version a change was made from.
    Stale {
        /// The version the change was made from.
        expected: String,
        /// The version in effect.
        current: String,
    },
    /// An operating-system resource (poll, waker, thread, signal) failed.
    Io {
        /// What the kernel was doing.
        context: &'static str,
        /// The error.
        cause: Arc<std::io::Error>,
    },
}

impl Error {
    /// What [`Error::NotLinked`] says, without the instance: the module,
    /// what is linked, and the closest linked module if one is close
    /// (`did you mean driver.memqueue?`).
    pub(crate) fn not_linked(module: &str, linked: &[String]) -> String {
        format!(
            "module {module:?} is not linked into this binary (linked: {}){}",
            linked.join(", "),
            crate::suggest::did_you_mean(module, linked.iter().map(String::as_str), str::to_owned)
        )
    }

    pub(crate) fn io(context: &'static str, cause: std::io::Error) -> Self {
        Error::Io {
            context,
            cause: Arc::new(cause),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ModuleMissing { module, krate } => write!(
                f,
                "module {module} (crate {krate}) is listed in the main file but absent from the \
                 module table; was the crate linked?"
            ),
            Error::DuplicateModule {
                module,
                first,
                second,
            } => write!(
                f,
                "two modules claim {module}: one in crate {first}, one in crate {second}"
            ),
            Error::AbiMismatch {
                module,
                krate,
                found,
                expected,
            } => write!(
                f,
                "module {module} (crate {krate}) was built for kernel ABI {found}, this kernel is ABI {expected}"
            ),
            Error::ModuleMain { module, .. } => {
                write!(f, "module main of {module} failed")
            }
            Error::Config(e) => e.fmt(f),
            Error::Instance {
                instance, module, ..
            } => write!(f, "instance {instance:?} of module {module}"),
            Error::Binding { class, key, reason } => {
                write!(f, "cannot bind {key:?} in the {class} table: {reason}")
            }
            Error::NotLinked {
                instance,
                module,
                linked,
            } => write!(
                f,
                "instance {instance:?}: {}",
                Error::not_linked(module, linked)
            ),
            Error::NoInstance { instance } => write!(f, "no instance is called {instance:?}"),
            Error::InstanceExists { instance } => {
                write!(f, "an instance called {instance:?} exists already")
            }
            Error::Protected { instance } => write!(
                f,
                "instance {instance:?} serves this request: this change may not remove or \
                 change it (keep its section as it is)"
            ),
            Error::Stopping => write!(f, "the server is stopping"),
            Error::Stale { expected, current } => write!(
                f,
                "the configuration changed since version {expected}: it is {current} now; get \
                 it again and reapply your change"
            ),
            Error::Io { context, .. } => f.write_str(context),
        }
    }
}

/// Each thing is said once: a variant with a cause says what failed in
/// its `Display` and returns the cause from `source()`, so a report that
/// walks the chain ([`Error::report`], `anyhow`'s `{:#}`) reads
/// `instance "q" of module driver.filequeue: cannot recover ...` with
/// nothing twice. `Config` is transparent: its `Display` is the
/// configuration error's own.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ModuleMain { cause, .. } | Error::Instance { cause, .. } => Some(&***cause),
            Error::Io { cause, .. } => Some(&**cause),
            _ => None,
        }
    }
}

impl Error {
    /// The whole story: this error and every cause under it, joined by
    /// `: ` — what a log line or an API reply should carry.
    pub fn report(&self) -> String {
        report(self)
    }
}

/// `err` and every `source()` under it, joined by `: `.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        // A cause that already repeats what it causes is said once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        Error::Config(e)
    }
}
