//! `--user`, `--group` and `--umask`: whom the front tier and the workers run as.

use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid};

use super::error::ConfigError;

/// The user and group the children switch to after the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolves `--user` and `--group`; None when neither is given.
pub fn credentials(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Credentials>, ConfigError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, primary) = match user {
        Some(text) => {
            let found = match text.parse::<u32>() {
                Ok(number) => User::from_uid(Uid::from_raw(number)),
                Err(_) => User::from_name(text),
            };
            match found {
                Ok(Some(user)) => (user.uid, user.gid),
                Ok(None) => match text.parse::<u32>() {
                    // A number with no passwd entry is still a uid (as in containers).
                    Ok(number) => (Uid::from_raw(number), getegid()),
                    Err(_) => return Err(ConfigError::new("--user", format!("no user {text:?}"))),
                },
                Err(err) => return Err(ConfigError::new("--user", format!("{text:?}: {err}"))),
            }
        }
        None => (geteuid(), getegid()),
    };
    let gid = match group {
        Some(text) => match text.parse::<u32>() {
            Ok(number) => Gid::from_raw(number),
            Err(_) => match Group::from_name(text) {
                Ok(Some(group)) => group.gid,
                Ok(None) => return Err(ConfigError::new("--group", format!("no group {text:?}"))),
                Err(err) => return Err(ConfigError::new("--group", format!("{text:?}: {err}"))),
            },
        },
        None => primary,
    };
    let changes = uid != geteuid() || gid != getegid();
    if changes && !geteuid().is_root() {
        let flag = if uid != geteuid() {
            "--user"
        } else {
            "--group"
        };
        return Err(ConfigError::new(
            flag,
            "switching user or group needs rwsgi started as root",
        ));
    }
    Ok(Some(Credentials { uid, gid }))
}

/// Parses `--umask`: `0o027` or `027` (octal), `0x17` (hex) or `23` (decimal).
pub fn umask(text: &str) -> Result<Mode, ConfigError> {
    let parsed = if let Some(octal) = text.strip_prefix("0o") {
        u32::from_str_radix(octal, 8)
    } else if let Some(hex) = text.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8)
    } else {
        text.parse()
    };
    match parsed {
        Ok(bits) if bits <= 0o777 => Ok(Mode::from_bits_truncate(bits)),
        _ => Err(ConfigError::new(
            "--umask",
            format!("{text:?} is not a mask from 0 to 0o777"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(umask("0o027").unwrap().bits(), 0o027);
        assert_eq!(umask("027").unwrap().bits(), 0o027);
        assert_eq!(umask("18").unwrap().bits(), 18);
        assert_eq!(umask("0").unwrap().bits(), 0);
        assert!(umask("0o1000").is_err());
        assert!(umask("x").is_err());
        assert!(umask("08").is_err());
    }
}
