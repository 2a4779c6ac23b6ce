//! A caller's fields as the domain takes them: the one check of each kind
//! of field (ids, names, catalogue names) and the one shape of the message
//! when one is refused, ``{field} `{value}` {problem}``. The gRPC edge,
//! import rows and import files all check here, so a bad value reads the
//! same whichever way it came.

use std::{borrow::Cow, collections::HashMap};

use super::{
    AccountId, AccountIdRef, DisplayName, HiddenKind, IdError, MAX_ID_LEN, MAX_SCOPE_REFS,
    ScopeKind, ScopeRef, SupervisorScope, UserId, UserIdRef, WHOLE_ACCOUNT, validate_id,
};

/// A field refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// An id left empty.
    #[error("{field} is required: give 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ - @ : +")]
    Missing { field: &'static str },
    #[error("{field} `{value}` {problem}")]
    Invalid {
        /// The field's name; an item of a list is named with its index
        /// (`supervisor_scope.refs[3].id`).
        field: Cow<'static, str>,
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
            field: Cow::Borrowed(field),
            value: shown(&value.to_string()),
            problem: problem.into(),
        }
    }

    /// `invalid`, for a field named at run time (an item of a list).
    pub fn invalid_item(
        field: String,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        FieldError::Invalid {
            field: Cow::Owned(field),
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
    shown_at_most(value, MAX_SHOWN)
}

/// `shown` with another bound: at most `max` of `value`'s characters, then
/// `…`. The one escaper of text that came from a caller: the audit trail
/// (`kept`) and the command line's tables show values through it too.
pub fn shown_at_most(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max.saturating_mul(4)));
    for (i, c) in value.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        push_shown(&mut out, c);
    }
    out
}

/// `value` shown as `shown_at_most` shows it, in at most `bytes` bytes, and
/// whether all of it fitted: a character, or its whole escape, is in or
/// out (never half an escape).
pub fn shown_within_bytes(value: &str, bytes: usize) -> (String, bool) {
    let mut out = String::new();
    for c in value.chars() {
        let before = out.len();
        push_shown(&mut out, c);
        if out.len() > bytes {
            out.truncate(before);
            return (out, false);
        }
    }
    (out, true)
}

/// One character as shown: itself, or escaped if it is hidden.
fn push_shown(out: &mut String, c: char) {
    if HiddenKind::of(c).is_some() {
        out.extend(c.escape_debug());
    } else {
        out.push(c);
    }
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

/// One reference of a supervisor scope as a caller gives it: its kind
/// already read (or, if it names no kind, the value as given) and its id.
#[derive(Debug, Clone)]
pub struct RawScopeRef<'a> {
    pub kind: Result<ScopeKind, String>,
    pub id: &'a str,
}

/// A scope's list holds at most `MAX_SCOPE_REFS` references: checked
/// first, before anything is kept for each.
pub fn scope_count(field: &'static str, count: usize) -> Result<(), FieldError> {
    if count > MAX_SCOPE_REFS {
        return Err(FieldError::invalid_item(
            format!("{field}[{MAX_SCOPE_REFS}]"),
            format!("{count} references"),
            format!(
                "is past the end: a scope holds at most {MAX_SCOPE_REFS} references; scope the supervisor to the whole account, or to fewer groups"
            ),
        ));
    }
    Ok(())
}

/// A scope's list of references (`field`, e.g. `supervisor_scope.refs`),
/// checked: 1 to `MAX_SCOPE_REFS` of them, each kind known, each id a valid
/// id (`validate_id`), none twice. A refusal names the item by its index
/// (from 0) and its value.
pub fn scope_refs(
    field: &'static str,
    refs: &[RawScopeRef<'_>],
) -> Result<SupervisorScope, FieldError> {
    if refs.is_empty() {
        return Err(FieldError::invalid(
            field,
            "",
            format!(
                "is an empty list; give 1 to {MAX_SCOPE_REFS} references, or the whole account"
            ),
        ));
    }
    scope_count(field, refs.len())?;
    let mut checked = Vec::with_capacity(refs.len());
    let mut first: HashMap<(ScopeKind, &str), usize> = HashMap::with_capacity(refs.len());
    for (index, raw) in refs.iter().enumerate() {
        let kind = match &raw.kind {
            Ok(kind) => *kind,
            Err(given) => {
                return Err(FieldError::invalid_item(
                    format!("{field}[{index}].kind"),
                    given,
                    "is not a scope kind; use site, user group, ring group or call queue",
                ));
            }
        };
        validate_id(raw.id).map_err(|e| {
            FieldError::invalid_item(format!("{field}[{index}].id"), raw.id, e.to_string())
        })?;
        if let Some(earlier) = first.insert((kind, raw.id), index) {
            return Err(FieldError::invalid_item(
                format!("{field}[{index}]"),
                format!("{kind}:{}", raw.id),
                format!("repeats {field}[{earlier}]; name each group once"),
            ));
        }
        checked.push(ScopeRef {
            kind,
            id: raw.id.to_owned(),
        });
    }
    Ok(SupervisorScope::Only(checked.into()))
}

/// A scope as text (a file's column, the command line's `--scope`):
/// `whole-account`, or `kind:id` references joined by commas, e.g.
/// `site:S1,user-group:G2`; checked as `scope_refs` checks a list.
pub fn scope_text(field: &'static str, text: &str) -> Result<SupervisorScope, FieldError> {
    let text = text.trim();
    if text == WHOLE_ACCOUNT {
        return Ok(SupervisorScope::WholeAccount);
    }
    if text.is_empty() {
        return Err(FieldError::invalid(
            field,
            text,
            "is empty; write whole-account, or references like site:S1,user-group:G2",
        ));
    }
    // Bounded before anything is kept for each item.
    scope_count(field, text.split(',').count())?;
    let refs: Vec<RawScopeRef<'_>> = text
        .split(',')
        .map(|item| {
            let item = item.trim();
            match item.split_once(':') {
                Some((kind, id)) => RawScopeRef {
                    kind: kind.parse().map_err(|_| kind.to_owned()),
                    id,
                },
                None => RawScopeRef {
                    kind: Err(item.to_owned()),
                    id: "",
                },
            }
        })
        .collect();
    scope_refs(field, &refs).map_err(|e| match e {
        // Text has no fields: the kind of an item is its text.
        FieldError::Invalid {
            field,
            value,
            problem,
        } if field.ends_with("].kind") => FieldError::Invalid {
            field,
            value,
            problem: format!("{problem}; write each reference as kind:id, e.g. site:S1"),
        },
        e => e,
    })
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

    fn raw(kind: Result<ScopeKind, String>, id: &str) -> RawScopeRef<'_> {
        RawScopeRef { kind, id }
    }

    /// Rule 12: a scope's list names each bad item by index and value.
    #[test]
    fn scope_lists_are_checked_item_by_item() {
        let message = |refs: &[RawScopeRef<'_>]| {
            scope_refs("supervisor_scope.refs", refs)
                .unwrap_err()
                .to_string()
        };
        let site = |id| raw(Ok(ScopeKind::Site), id);
        assert_eq!(
            message(&[]),
            "supervisor_scope.refs `` is an empty list; give 1 to 1000 references, or the whole account"
        );
        assert_eq!(
            message(&[site("S1"), raw(Err("7".into()), "x")]),
            "supervisor_scope.refs[1].kind `7` is not a scope kind; use site, user group, ring group or call queue"
        );
        assert_eq!(
            message(&[site("S1"), site("a/b")]),
            "supervisor_scope.refs[1].id `a/b` contains `/`; use only letters A-Z a-z, digits 0-9 and the characters . _ - @ : +"
        );
        assert!(message(&[site("")]).starts_with("supervisor_scope.refs[0].id `` is empty"));
        assert_eq!(
            message(&[site("S1"), raw(Ok(ScopeKind::CallQueue), "S1"), site("S1")]),
            "supervisor_scope.refs[2] `site:S1` repeats supervisor_scope.refs[0]; name each group once"
        );
        let ids: Vec<String> = (0..=MAX_SCOPE_REFS).map(|i| format!("S{i}")).collect();
        let many: Vec<RawScopeRef<'_>> = ids.iter().map(|id| site(id)).collect();
        assert!(
            message(&many)
                .starts_with("supervisor_scope.refs[1000] `1001 references` is past the end"),
            "{}",
            message(&many)
        );
        let most = scope_refs("supervisor_scope.refs", &many[..MAX_SCOPE_REFS]).unwrap();
        assert_eq!(most.refs().map(|r| r.len()), Some(MAX_SCOPE_REFS));
    }

    #[test]
    fn scopes_as_text() {
        assert_eq!(
            scope_text("--scope", "whole-account"),
            Ok(SupervisorScope::WholeAccount)
        );
        let scope = scope_text("--scope", "site:S1, user-group:G:2").unwrap();
        assert_eq!(scope.text(), "site:S1,user-group:G:2");
        assert_eq!(
            scope_text("--scope", "team:T1").unwrap_err().to_string(),
            "--scope[0].kind `team` is not a scope kind; use site, user group, ring group or call queue; write each reference as kind:id, e.g. site:S1"
        );
        assert!(scope_text("--scope", "").is_err());
        assert!(scope_text("--scope", "site:S1,site:S1").is_err());
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
