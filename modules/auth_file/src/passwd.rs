//! The password file: one `user:hash` line per user, the hash an argon2id
//! PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with its own
//! salt and parameters; `#` starts a comment. `bindery passwd` writes it
//! through [`set`] and [`delete`].
//!
//! Why argon2id rather than bcrypt: it is memory-hard (a GPU or ASIC
//! guessing passwords pays in memory, not only in time), it is what OWASP
//! recommends first, it takes passwords of any length (bcrypt silently
//! ignores bytes past 72), and the RustCrypto crate is pure Rust.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Users and their password hashes.
pub type Users = HashMap<String, String>;

/// Whether `user` may be a user name: not empty, at most 128 bytes,
/// printable ASCII or UTF-8 letters without `:`, whitespace, `/`, `+`,
/// `#`, `%`, and not starting with `@` (names that are safe in a path for
/// `%u` and in the ACL syntax).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && !user.starts_with('@')
        && user != "*"
        && user
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !":/+#%".contains(c))
}

/// Hashes `password` with a fresh salt (argon2id, OWASP's parameters:
/// 19 MiB, 2 passes).
pub fn hash(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing: {e}"))
}

/// Whether `password` matches the PHC string `stored` (slow by design).
pub fn verify(stored: &str, password: &[u8]) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// Parses a password file; errors name the line.
pub fn parse(text: &str) -> Result<Users, String> {
    let mut users = Users::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = n + 1;
        let Some((user, stored)) = line.split_once(':') else {
            return Err(format!("line {at}: expected user:hash"));
        };
        if !valid_user(user) {
            return Err(format!("line {at}: {user:?} is not a valid user name"));
        }
        if PasswordHash::new(stored).is_err() {
            return Err(format!(
                "line {at}: the hash of {user:?} is not a PHC string"
            ));
        }
        if users.insert(user.to_owned(), stored.to_owned()).is_some() {
            return Err(format!("line {at}: {user:?} appears twice"));
        }
    }
    Ok(users)
}

/// Reads and parses the password file at `path`.
pub fn load(path: &Path) -> Result<Users, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Sets `user`'s password in the file at `path` (made, mode 0600, if
/// missing); other lines and comments are kept. Returns whether the user
/// was new.
pub fn set(path: &Path, user: &str, password: &[u8]) -> Result<bool, String> {
    if !valid_user(user) {
        return Err(format!(
            "{user:?} is not a valid user name (no ':', '/', '+', '#', '%', spaces; not starting with '@')"
        ));
    }
    let hashed = hash(password)?;
    edit(path, user, Some(&hashed))
}

/// Deletes `user` from the file at `path`; an error if absent.
pub fn delete(path: &Path, user: &str) -> Result<(), String> {
    if edit(path, user, None)? {
        return Err(format!("{user:?} is not in {}", path.display()));
    }
    Ok(())
}

/// Rewrites the file with `user`'s line replaced (or removed); true if
/// the user was not there.
fn edit(path: &Path, user: &str, hashed: Option<&str>) -> Result<bool, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    let mut absent = true;
    for line in text.lines() {
        let this = line.trim().split_once(':').map(|(u, _)| u);
        if this == Some(user) && !line.trim_start().starts_with('#') {
            absent = false;
            if let Some(h) = hashed {
                out.push_str(&format!("{user}:{h}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if absent {
        if let Some(h) = hashed {
            out.push_str(&format!("{user}:{h}\n"));
        }
    }
    replace(path, &out)?;
    Ok(absent)
}

/// Replaces the file at `path` with `out`, mode 0600: written beside,
/// then renamed, so a reader never sees half a file.
pub(crate) fn replace(path: &Path, out: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(out.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_verify_delete() {
        let dir = std::env::temp_dir().join(format!("auth-file-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        let _ = std::fs::remove_file(&path);
        assert!(set(&path, "alice", b"wonderland").unwrap());
        assert!(set(&path, "bob", b"builder").unwrap());
        assert!(!set(&path, "alice", b"looking-glass").unwrap());
        let users = load(&path).unwrap();
        assert!(verify(&users["alice"], b"looking-glass"));
        assert!(!verify(&users["alice"], b"wonderland"));
        delete(&path, "bob").unwrap();
        assert!(delete(&path, "bob").is_err());
        assert_eq!(load(&path).unwrap().len(), 1);
        assert!(set(&path, "a/b", b"x").is_err());
        assert!(parse("alice:not-a-hash").unwrap_err().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
