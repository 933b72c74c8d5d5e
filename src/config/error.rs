//! [`ConfigError`]: a user's mistake in one setting. Its own leaf, so that the modules
//! checking each setting import it without importing `config` itself, which imports them.

/// A user's mistake in the configuration: which setting, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// The flag (as the user wrote it) that is wrong.
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `setting`.
    pub fn new(setting: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            message: message.into(),
        }
    }
}
