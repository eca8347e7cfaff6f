//! The token file: HTTP `Authorization: Bearer` tokens, one
//! `user:label:digest` line per token (a user may have several, told apart
//! by label), the digest the BLAKE2s-256 of the token in hex; `#` starts a
//! comment. `bindery passwd --token LABEL FILE USER` makes a token,
//! prints it once and stores only its digest ([`add`]); `-D --token
//! LABEL` revokes it ([`revoke`]).
//!
//! Why a fast digest here when passwords get argon2id: a token is 32
//! random bytes from the operating system (256 bits), not something a
//! person chose, so there is no dictionary to try and a slow hash would
//! buy nothing — guessing a token from its digest is as hard as guessing
//! the token. And a token comes with no user name to find its line by: the
//! digest is the key the token is looked up with, which a salted slow hash
//! could not be. (This is how GitHub and others store API tokens.) The
//! lookup compares digests of the presented token, so its time tells an
//! attacker nothing about any stored token.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use blake2::{Blake2s256, Digest};

/// Tokens by the digest of each: (user, label).
#[derive(Debug, Default)]
pub struct Tokens(HashMap<[u8; 32], (String, String)>);

impl Tokens {
    /// The user a presented token belongs to.
    pub fn user(&self, token: &[u8]) -> Option<&str> {
        self.0.get(&digest(token)).map(|(u, _)| u.as_str())
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The BLAKE2s-256 digest of `token`.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Blake2s256::digest(token).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether `label` may name a token: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_label(label: &str) -> bool {
    (1..=64).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The line that stores `token` for `user` under `label`.
pub fn line(user: &str, label: &str, token: &str) -> String {
    format!("{user}:{label}:{}\n", hex(&digest(token.as_bytes())))
}

/// A new token: `bdy_` and 64 hex digits (32 bytes from the OS).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("bdy_{}", hex(&bytes))
}

/// Parses a token file; errors name the line.
pub fn parse(text: &str) -> Result<Tokens, String> {
    let mut tokens = Tokens::default();
    let mut labels = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = n + 1;
        let mut parts = line.splitn(3, ':');
        let (Some(user), Some(label), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {at}: expected user:label:digest"));
        };
        if !crate::passwd::valid_user(user) {
            return Err(format!("line {at}: {user:?} is not a valid user name"));
        }
        if !valid_label(label) {
            return Err(format!("line {at}: {label:?} is not a valid label"));
        }
        let Some(d) = unhex(d) else {
            return Err(format!("line {at}: the digest is not 64 hex digits"));
        };
        if !labels.insert((user.to_owned(), label.to_owned())) {
            return Err(format!("line {at}: {user:?} has token {label:?} twice"));
        }
        if tokens
            .0
            .insert(d, (user.to_owned(), label.to_owned()))
            .is_some()
        {
            return Err(format!("line {at}: the same token appears twice"));
        }
    }
    Ok(tokens)
}

/// Reads and parses the token file at `path`.
pub fn load(path: &Path) -> Result<Tokens, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes a token for `user` labelled `label` in the file at `path` (made,
/// mode 0600, if missing; a token of that label replaced); returns it.
pub fn add(path: &Path, user: &str, label: &str) -> Result<String, String> {
    if !crate::passwd::valid_user(user) {
        return Err(format!("{user:?} is not a valid user name"));
    }
    if !valid_label(label) {
        return Err(format!(
            "{label:?} is not a valid token label (1 to 64 of A-Z a-z 0-9 . _ -)"
        ));
    }
    let token = generate();
    edit(path, user, label, Some(&line(user, label, &token)))?;
    Ok(token)
}

/// Revokes `user`'s token labelled `label`; an error if absent.
pub fn revoke(path: &Path, user: &str, label: &str) -> Result<(), String> {
    if edit(path, user, label, None)? {
        return Err(format!(
            "{user:?} has no token {label:?} in {}",
            path.display()
        ));
    }
    Ok(())
}

/// Rewrites the file with `user`'s `label` line replaced (or removed);
/// true if it was not there.
fn edit(path: &Path, user: &str, label: &str, new: Option<&str>) -> Result<bool, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    let mut absent = true;
    let prefix = format!("{user}:{label}:");
    for l in text.lines() {
        if l.trim().starts_with(&prefix) {
            absent = false;
            out.push_str(new.unwrap_or_default());
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if absent {
        out.push_str(new.unwrap_or_default());
    }
    crate::passwd::replace(path, &out)?;
    Ok(absent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_find_revoke() {
        let dir = std::env::temp_dir().join(format!("bindery-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        let a = add(&path, "alice", "ci").unwrap();
        let b = add(&path, "bob", "ci").unwrap();
        assert!(a.starts_with("bdy_") && a.len() == 68 && a != b);
        let t = load(&path).unwrap();
        assert_eq!(t.user(a.as_bytes()), Some("alice"));
        assert_eq!(t.user(b.as_bytes()), Some("bob"));
        assert_eq!(t.user(b"bdy_0000"), None);
        let a2 = add(&path, "alice", "ci").unwrap();
        let t = load(&path).unwrap();
        assert_eq!((t.len(), t.user(a.as_bytes())), (2, None), "replaced");
        assert_eq!(t.user(a2.as_bytes()), Some("alice"));
        revoke(&path, "alice", "ci").unwrap();
        assert!(revoke(&path, "alice", "ci").is_err());
        assert_eq!(load(&path).unwrap().user(a2.as_bytes()), None);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .all(|l| !l.contains(&b[4..])),
            "the token itself is never stored"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse("# c\nalice:ci:zz\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse("alice:c i:00\n").unwrap_err();
        assert!(e.contains("label"), "{e}");
        let e = parse("alice\n").unwrap_err();
        assert!(e.contains("user:label:digest"), "{e}");
    }
}
