use std::{borrow::Borrow, fmt};

use serde::{Deserialize, Serialize};

/// The longest identifier accepted.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty; it must be 1 to {MAX_ID_LEN} characters")]
    Empty,
    #[error("is {0} characters long; the most is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("contains `{0}`; use only letters A-Z a-z, digits 0-9 and the characters . _ - @ : +")]
    BadChar(char),
}

/// Checks that `s` is 1 to 128 characters of `A-Z a-z 0-9 . _ - @ : +`.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':' | '+')))
    {
        return Err(IdError::BadChar(c));
    }
    // All characters are ASCII here, so bytes == characters.
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    Ok(())
}

/// The longest display name accepted, in characters.
pub const MAX_DISPLAY_NAME: usize = 256;

/// Why a display name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayNameError {
    #[error("is {0} characters long; the most is {MAX_DISPLAY_NAME}")]
    TooLong(usize),
    #[error("contains the control character {}; remove it", .0.escape_unicode())]
    Control(char),
}

/// Display names: at most 256 characters, no control characters.
pub fn validate_display_name(s: &str) -> Result<(), DisplayNameError> {
    let len = s.chars().count();
    if len > MAX_DISPLAY_NAME {
        return Err(DisplayNameError::TooLong(len));
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(DisplayNameError::Control(c)),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                validate_id(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account's identifier, validated.
    AccountId
);
id_type!(
    /// A user's identifier within its account, validated.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(validate_id("aZ09._-@:+").is_ok());
        assert!(validate_id(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"a".repeat(129)), Err(IdError::TooLong(129)));
        assert_eq!(validate_id("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(validate_id("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(validate_id("é"), Err(IdError::BadChar('é')));
    }
}
