//! `bindery passwd FILE USER`: adds, changes or deletes a user in an
//! `auth.file` password file, like `mosquitto_passwd`.
//!
//! The password is asked twice on the terminal (not echoed), or read as
//! the first line of standard input with `--stdin` (for scripts). The file
//! is made (mode 0600) if missing; other users and comments are kept; the
//! file is replaced whole (written beside, then renamed). A running server
//! sees the change on its next reload (SIGHUP, `bindery ctl reload`).
//!
//! With `--token LABEL` the file is a token file instead: a new bearer
//! token for USER is made, its digest stored under LABEL, and the token
//! printed once on standard output (nothing else is); `-D --token LABEL`
//! revokes it.

use std::io::BufRead as _;
use std::path::PathBuf;

/// The arguments of `bindery passwd`.
#[derive(clap::Args, Debug)]
pub struct Passwd {
    /// The password file (made if missing).
    pub file: PathBuf,
    /// The user to add, change or delete.
    pub user: String,
    /// Read the password from the first line of standard input instead of
    /// asking on the terminal.
    #[arg(long)]
    pub stdin: bool,
    /// Delete the user instead (with `--token`: revoke that token).
    #[arg(long, short = 'D', conflicts_with = "stdin")]
    pub delete: bool,
    /// FILE is a token file: make a bearer token for USER labelled LABEL
    /// and print it (or, with -D, revoke it).
    #[arg(long, value_name = "LABEL", conflicts_with = "stdin")]
    pub token: Option<String>,
}

/// Runs `bindery passwd`; the message to print, or why it failed.
pub fn run(p: &Passwd) -> Result<String, String> {
    if let Some(label) = &p.token {
        if p.delete {
            auth_file::tokens::revoke(&p.file, &p.user, label)?;
            return Ok(format!(
                "revoked token {label:?} of {:?} in {}",
                p.user,
                p.file.display()
            ));
        }
        let token = auth_file::tokens::add(&p.file, &p.user, label)?;
        println!("{token}");
        return Ok(format!(
            "made token {label:?} for {:?} in {} (printed once; only its digest is kept)",
            p.user,
            p.file.display()
        ));
    }
    if p.delete {
        auth_file::passwd::delete(&p.file, &p.user)?;
        return Ok(format!("deleted {:?} from {}", p.user, p.file.display()));
    }
    if !auth_file::passwd::valid_user(&p.user) {
        return Err(format!(
            "{:?} is not a valid user name (no ':', '/', '+', '#', '%' or spaces; not starting with '@')",
            p.user
        ));
    }
    let password = if p.stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("reading the password: {e} (use --stdin without a terminal)"))?;
        let again = rpassword::prompt_password("Password again: ")
            .map_err(|e| format!("reading the password: {e}"))?;
        if first != again {
            return Err("the passwords differ; nothing changed".into());
        }
        first
    };
    if password.is_empty() {
        return Err("an empty password; nothing changed".into());
    }
    let new = auth_file::passwd::set(&p.file, &p.user, password.as_bytes())?;
    Ok(format!(
        "{} {:?} in {}",
        if new {
            "added"
        } else {
            "changed the password of"
        },
        p.user,
        p.file.display()
    ))
}
