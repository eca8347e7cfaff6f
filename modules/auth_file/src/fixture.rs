//! An `auth.file` instance over files of its own, for certification and
//! tests: users and rules given as data are written as a password file and
//! an ACL file in a scratch directory, and a change is applied the way a
//! server applies it — rewrite the files, then reload the configuration.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use bindery::{Config, Kernel, Registry};
use bindery_classes::auth::{Action, AuthHandle};
use parking_lot::Mutex;

/// One `auth.file` instance per [`Fixture::make`], each in a kernel of its
/// own, over files in a scratch directory removed on drop.
pub struct Fixture {
    dir: PathBuf,
    /// Every kernel made, the last one first in line for changes.
    kernels: Mutex<Vec<(Kernel, Config, PathBuf)>>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A fixture with a fresh scratch directory.
    pub fn new() -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bindery-auth-file-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        Fixture {
            dir,
            kernels: Mutex::new(Vec::new()),
        }
    }

    /// An instance knowing `users` (name, password), allowing what `rules`
    /// say (user or `*`, action, pattern) and nothing else; with
    /// `anonymous`, connections without credentials are let in.
    pub fn make(
        &self,
        users: &[(&str, &str)],
        rules: &[(&str, Action, &str)],
        anonymous: bool,
    ) -> Result<AuthHandle, String> {
        self.make_with_tokens(users, &[], rules, anonymous)
    }

    /// [`Fixture::make`], with bearer `tokens` (user, token) in a token
    /// file.
    pub fn make_with_tokens(
        &self,
        users: &[(&str, &str)],
        tokens: &[(&str, &str)],
        rules: &[(&str, Action, &str)],
        anonymous: bool,
    ) -> Result<AuthHandle, String> {
        let mut kernels = self.kernels.lock();
        let dir = self.dir.join(kernels.len().to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write(&dir, users, tokens, rules)?;
        let text = format!(
            "[instances.auth]\nmodule = \"auth.file\"\n[instances.auth.config]\n\
             password_file = {:?}\nacl_file = {:?}\ntoken_file = {:?}\n\
             anonymous = {anonymous}\nworkers = 2\n",
            dir.join("passwd").display().to_string(),
            dir.join("acl").display().to_string(),
            dir.join("tokens").display().to_string(),
        );
        let config = Config::parse("auth.file fixture", &text).map_err(|e| e.to_string())?;
        let registry = Registry::of(&[&crate::MODULE]).map_err(|e| e.to_string())?;
        let kernel = Kernel::build_with(registry, &config, Some(1)).map_err(|e| e.report())?;
        let auth = bindery_classes::auth::lookup(kernel.runtime(), "default")
            .ok_or("the auth.file instance is not bound to \"default\"")?;
        kernels.push((kernel, config, dir));
        Ok(auth)
    }

    /// Rewrites the files of the instance last made and reloads its
    /// configuration (unchanged), as SIGHUP would.
    pub fn change(
        &self,
        users: &[(&str, &str)],
        rules: &[(&str, Action, &str)],
    ) -> Result<(), String> {
        self.change_with_tokens(users, &[], rules)
    }

    /// [`Fixture::change`], with bearer `tokens` (user, token).
    pub fn change_with_tokens(
        &self,
        users: &[(&str, &str)],
        tokens: &[(&str, &str)],
        rules: &[(&str, Action, &str)],
    ) -> Result<(), String> {
        let kernels = self.kernels.lock();
        let (kernel, config, dir) = kernels.last().ok_or("no instance made yet")?;
        write(dir, users, tokens, rules)?;
        kernel.runtime().reload(config).map_err(|e| e.report())?;
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (mut kernel, _, _) in self.kernels.lock().drain(..) {
            kernel.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(
    dir: &std::path::Path,
    users: &[(&str, &str)],
    tokens: &[(&str, &str)],
    rules: &[(&str, Action, &str)],
) -> Result<(), String> {
    let mut token_file = String::new();
    for (n, (user, token)) in tokens.iter().enumerate() {
        token_file += &crate::tokens::line(user, &format!("t{n}"), token);
    }
    let mut passwd = String::new();
    for (user, password) in users {
        passwd += &format!("{user}:{}\n", crate::passwd::hash(password.as_bytes())?);
    }
    let mut acl = String::new();
    for (user, action, pattern) in rules {
        acl += &format!("allow {user} {} {pattern}\n", action.as_str());
    }
    for (name, text) in [("passwd", passwd), ("acl", acl), ("tokens", token_file)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
