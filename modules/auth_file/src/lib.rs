//! `auth.file`: users in a password file, access rules in an ACL file.
//!
//! ```toml
//! [instances.users]
//! module = "auth.file"
//! [instances.users.config]
//! password_file = "passwd"   # user:argon2id-hash lines, written by `bindery passwd`
//! acl_file = "acl"           # rules (see `acl`); leave out: users may do everything
//! token_file = "tokens"      # HTTP Bearer tokens (see `tokens`); leave out: none accepted
//! anonymous = false          # connections without credentials: refused (true: known as @anonymous)
//! realm = "bindery"          # named in HTTP WWW-Authenticate
//! workers = 2                # threads that verify password hashes
//! ```
//!
//! Relative paths resolve under the data directory. Both files are read
//! when the instance is made (a bad line stops the start, naming file and
//! line) and again on every configuration reload that keeps the instance
//! (SIGHUP, the management API's `PUT /config`): the kernel's reload hook
//! ([`bindery::InstanceContext::on_reload`]). A file that no longer parses
//! on reload is logged and the rules in effect stay. Every re-read moves
//! the instance's generation, so terminals drop their cached decisions.
//!
//! Verifying an argon2id hash takes tens of milliseconds on purpose: it
//! runs on the instance's worker threads, never a reactor, and completes
//! through the caller's [`bindery::Completion`]. At most 1024 logins wait
//! for a worker; past that a login fails as unavailable (CONNACK 3, 503).
//! An unknown user is checked against a dummy hash, so it costs the same
//! time as a wrong password and gets the same answer.
//!
//! HTTP Bearer tokens are accepted with a `token_file` (`tokens`: each
//! token stands for a user, whose ACL rules apply; it is re-read with the
//! other files, so a revoked token is refused from the reload on), and
//! refused as bad credentials without one. A token is checked at once (a
//! digest and a map lookup), not on the workers.

pub mod acl;
pub mod fixture;
pub mod passwd;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bindery::Completion;
use bindery_classes::auth::{self, Action, Auth, Credentials, Identity, Login};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Auth,
    name: "file",
    description: "users in an argon2id password file, ACL rules on paths; re-read on reload",
    main: module_main,
}

/// Logins waiting for a worker at most.
const QUEUE: usize = 1024;

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The password file (`bindery passwd` writes it).
    pub password_file: PathBuf,
    /// The ACL file; none: every authenticated connection may do anything.
    pub acl_file: Option<PathBuf>,
    /// The token file (HTTP Bearer tokens, `bindery passwd --token`);
    /// none: tokens are refused.
    pub token_file: Option<PathBuf>,
    /// Accept connections that present no credentials, as `@anonymous`.
    pub anonymous: bool,
    /// The realm HTTP clients are told.
    pub realm: String,
    /// Threads verifying password hashes (at least 1).
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            password_file: "passwd".into(),
            acl_file: None,
            token_file: None,
            anonymous: false,
            realm: "bindery".into(),
            workers: 2,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Auth>,
) -> Result<(), bindery::BoxError> {
    auth::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        let files = Files {
            passwords: cx.resolve(&config.password_file),
            acl: config.acl_file.as_ref().map(|p| cx.resolve(p)),
            tokens: config.token_file.as_ref().map(|p| cx.resolve(p)),
        };
        let rules = Arc::new(RwLock::new(Arc::new(files.read()?)));
        let generation = Arc::new(AtomicU64::new(next_generation()));
        {
            let (rules, generation, instance) =
                (rules.clone(), generation.clone(), cx.name().to_owned());
            cx.on_reload(move || match files.read() {
                Ok(r) => {
                    *rules.write() = Arc::new(r);
                    generation.store(next_generation(), Ordering::Release);
                    tracing::info!(instance = %instance, "password and ACL files re-read");
                }
                Err(e) => tracing::error!(
                    instance = %instance,
                    "reload: {e}; the rules in effect stay"
                ),
            });
        }
        let pool = Pool::start(cx.name(), config.workers.max(1));
        let stopping = pool.clone();
        cx.on_stop(move |_| stopping.stop());
        Ok(FileAuth {
            rules,
            generation,
            anonymous: config.anonymous,
            realm: config.realm,
            takes_tokens: config.token_file.is_some(),
            pool,
        })
    });
    Ok(())
}

/// A generation no incarnation of any instance had: terminals that kept
/// decisions of an older incarnation cannot mistake them for current.
fn next_generation() -> u64 {
    static GENERATIONS: AtomicU64 = AtomicU64::new(0);
    GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Where the rules come from.
struct Files {
    passwords: PathBuf,
    acl: Option<PathBuf>,
    tokens: Option<PathBuf>,
}

impl Files {
    fn read(&self) -> Result<Rules, String> {
        let users = passwd::load(&self.passwords).map_err(|e| format!("password_file {e}"))?;
        let acl = match &self.acl {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("acl_file {}: {e}", path.display()))?;
                Some(
                    acl::Acl::parse(&text)
                        .map_err(|e| format!("acl_file {}: {e}", path.display()))?,
                )
            }
        };
        let tokens = match &self.tokens {
            None => tokens::Tokens::default(),
            Some(path) => tokens::load(path).map_err(|e| format!("token_file {e}"))?,
        };
        Ok(Rules {
            users,
            acl,
            tokens,
            dummy: dummy(),
        })
    }
}

/// A hash of nothing anyone knows, verified for unknown users.
fn dummy() -> Arc<str> {
    static DUMMY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            passwd::hash(b"\0no user has this password\0")
                .unwrap_or_default()
                .into()
        })
        .clone()
}

/// One reading of the files.
struct Rules {
    users: passwd::Users,
    acl: Option<acl::Acl>,
    tokens: tokens::Tokens,
    dummy: Arc<str>,
}

/// The `auth.file` instance.
pub struct FileAuth {
    rules: Arc<RwLock<Arc<Rules>>>,
    generation: Arc<AtomicU64>,
    anonymous: bool,
    realm: String,
    takes_tokens: bool,
    pool: Arc<Pool>,
}

impl Auth for FileAuth {
    fn authenticate(&self, credentials: Credentials, done: Completion<Login>) {
        if credentials.is_empty() {
            return done.succeed(if self.anonymous {
                Login::Accepted(Identity::anonymous())
            } else {
                Login::NotAuthorized
            });
        }
        let rules = self.rules.read().clone();
        if let Some(token) = &credentials.token {
            // A token alone names its user; with a user name besides, or
            // unknown: bad credentials, the same answer.
            let user = rules
                .tokens
                .user(&token.0)
                .filter(|_| credentials.username.is_none());
            return done.succeed(match user {
                Some(u) => Login::Accepted(Identity::user(u)),
                None => Login::BadCredentials,
            });
        }
        let Some(user) = credentials.username else {
            return done.succeed(Login::BadCredentials);
        };
        let password = credentials.password.unwrap_or_default();
        self.pool.run(Box::new(move || {
            // Unknown or not: one hash verified, one answer.
            let (stored, known) = match rules.users.get(&user) {
                Some(h) => (h.as_str(), true),
                None => (&*rules.dummy, false),
            };
            let ok = passwd::verify(stored, &password.0) && known;
            done.succeed(if ok {
                Login::Accepted(Identity::user(&user))
            } else {
                Login::BadCredentials
            });
        }));
    }

    fn authorize(&self, who: &Identity, action: Action, path: &str, done: Completion<bool>) {
        let rules = self.rules.read().clone();
        let allowed = match &rules.acl {
            None => true,
            Some(acl) => acl.allows(who.user.as_deref(), action, path),
        };
        done.succeed(allowed);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn realm(&self) -> &str {
        &self.realm
    }

    fn accepts_tokens(&self) -> bool {
        self.takes_tokens
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that verify hashes, fed through a bounded queue.
struct Pool {
    queue: Mutex<Option<mpsc::SyncSender<Job>>>,
}

impl Pool {
    fn start(instance: &str, workers: usize) -> Arc<Pool> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{instance}-auth-{n}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(instance, "could not start an auth worker: {e}");
            }
        }
        Arc::new(Pool {
            queue: Mutex::new(Some(tx)),
        })
    }

    /// Queues `job`; a full queue or a stopped pool drops it, which fails
    /// its completion (`Unavailable` or `Dropped`).
    fn run(&self, job: Job) {
        let queue = self.queue.lock().clone();
        let Some(queue) = queue else { return };
        if let Err(mpsc::TrySendError::Full(job)) = queue.try_send(job) {
            tracing::warn!("auth.file: {QUEUE} logins wait already; refusing one");
            drop(job);
        }
    }

    /// Ends the workers once the queue is empty.
    fn stop(&self) {
        self.queue.lock().take();
    }
}
