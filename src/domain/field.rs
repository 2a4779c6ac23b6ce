//! A caller's fields as the domain takes them: the one check of each kind
//! of field (ids, names, catalogue names) and the one shape of the message
//! when one is refused, ``{field} `{value}` {problem}``. The gRPC edge,
//! import rows and import files all check here, so a bad value reads the
//! same whichever way it came.

use super::{
    AccountId, AccountIdRef, DisplayName, HiddenKind, IdError, MAX_ID_LEN, UserId, UserIdRef,
    validate_id,
};

/// A field refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// An id left empty.
    #[error("{field} is required: give 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ - @ : +")]
    Missing { field: &'static str },
    #[error("{field} `{value}` {problem}")]
    Invalid {
        field: &'static str,
        /// The value as `shown` shows it.
        value: String,
        problem: String,
    },
}

impl FieldError {
    /// `value` (any value: it is `shown`) refused for `problem`.
    pub fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        FieldError::Invalid {
            field,
            value: shown(&value.to_string()),
            problem: problem.into(),
        }
    }

    fn id(field: &'static str, value: &str, e: IdError) -> Self {
        match e {
            IdError::Empty => FieldError::Missing { field },
            e => FieldError::invalid(field, value, e.to_string()),
        }
    }
}

/// The most characters of a caller's value a message repeats.
pub const MAX_SHOWN: usize = 64;

/// A caller's value as a message shows it: characters a name may not hold
/// (`HiddenKind`) escaped, so the message shows what hid in it, and at most
/// `MAX_SHOWN` characters, so it does not repeat megabytes.
pub fn shown(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_SHOWN * 4));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_SHOWN {
            out.push('…');
            break;
        }
        if HiddenKind::of(c).is_some() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks an id field without taking it.
pub fn id(field: &'static str, value: &str) -> Result<(), FieldError> {
    validate_id(value).map_err(|e| FieldError::id(field, value, e))
}

pub fn account_id(field: &'static str, value: String) -> Result<AccountId, FieldError> {
    id(field, &value)?;
    AccountId::try_from(value).map_err(|e| FieldError::id(field, "", e))
}

pub fn user_id(field: &'static str, value: String) -> Result<UserId, FieldError> {
    id(field, &value)?;
    UserId::try_from(value).map_err(|e| FieldError::id(field, "", e))
}

/// An account id borrowed from the request (the check path allocates none).
pub fn account_id_ref<'a>(
    field: &'static str,
    value: &'a str,
) -> Result<AccountIdRef<'a>, FieldError> {
    AccountIdRef::parse(value).map_err(|e| FieldError::id(field, value, e))
}

/// A user id borrowed from the request.
pub fn user_id_ref<'a>(field: &'static str, value: &'a str) -> Result<UserIdRef<'a>, FieldError> {
    UserIdRef::parse(value).map_err(|e| FieldError::id(field, value, e))
}

/// A display name or a token name (`validate_display_name`).
pub fn display_name(field: &'static str, value: String) -> Result<DisplayName, FieldError> {
    DisplayName::parse(value).map_err(|(e, value)| FieldError::invalid(field, value, e.to_string()))
}

/// The name of a catalogue entry (an edition, a product line) as a caller
/// gives it: the catalogue says whether it exists, but a name longer than
/// any catalogue id can hold is refused here, so no refusal echoes it whole.
pub fn catalogue_name(field: &'static str, value: String) -> Result<String, FieldError> {
    let len = value.chars().count();
    if len > MAX_ID_LEN {
        return Err(FieldError::invalid(
            field,
            &value,
            format!("is {len} characters long; no catalogue name is longer than {MAX_ID_LEN}"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_shape_for_every_field() {
        let message = |e: FieldError| e.to_string();
        assert_eq!(
            message(account_id("account_id", "ac/me".into()).unwrap_err()),
            "account_id `ac/me` contains `/`; use only letters A-Z a-z, digits 0-9 and the characters . _ - @ : +"
        );
        assert_eq!(
            message(user_id_ref("user_id", "").unwrap_err()),
            "user_id is required: give 1 to 128 characters of A-Z a-z 0-9 . _ - @ : +"
        );
        assert_eq!(
            message(display_name("display_name", "Eve\u{202e}lin".into()).unwrap_err()),
            "display_name `Eve\\u{202e}lin` contains the invisible format character U+202E at position 4 (counting characters from 1); remove it"
        );
        assert_eq!(
            message(catalogue_name("edition", "X".repeat(129)).unwrap_err()),
            format!(
                "edition `{}…` is 129 characters long; no catalogue name is longer than 128",
                "X".repeat(MAX_SHOWN)
            )
        );
    }

    #[test]
    fn values_are_shown_short_and_with_hidden_characters_escaped() {
        assert_eq!(shown("Zoë O'Brien"), "Zoë O'Brien");
        assert_eq!(shown("a\nb\u{200b}"), "a\\nb\\u{200b}");
        assert_eq!(
            shown(&"é".repeat(1000)),
            format!("{}…", "é".repeat(MAX_SHOWN))
        );
    }

    #[test]
    fn borrowed_ids_are_the_owned_ids_checks() {
        assert_eq!(
            account_id_ref("account_id", "acme").map(AccountIdRef::to_owned),
            account_id("account_id", "acme".into())
        );
        assert_eq!(
            user_id_ref("user_id", "a b").unwrap_err(),
            user_id("user_id", "a b".into()).unwrap_err()
        );
    }
}
