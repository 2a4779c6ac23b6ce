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
    #[error(
        "contains `{}`; use only letters A-Z a-z, digits 0-9 and the characters . _ - @ : +",
        super::field::shown(.0.encode_utf8(&mut [0; 4]))
    )]
    BadChar(char),
}

/// Checks that `s` is 1 to 128 characters of `A-Z a-z 0-9 . _ - @ : +`.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    // Every check validates two ids: a table lookup a byte first, and the
    // characters only for an id that fails it (to name the first bad one).
    if s.bytes().all(|b| ID_BYTES[usize::from(b)]) {
        return if s.len() > MAX_ID_LEN {
            Err(IdError::TooLong(s.len()))
        } else {
            Ok(())
        };
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

/// The bytes an id may hold (ASCII only, so a byte is a character).
const ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8 as char;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':' | '+');
        b += 1;
    }
    table
};

/// The longest display name accepted, in characters.
pub const MAX_DISPLAY_NAME: usize = 256;

/// Why a display name (or a token name) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayNameError {
    #[error("is {0} characters long; the most is {MAX_DISPLAY_NAME}")]
    TooLong(usize),
    #[error(transparent)]
    Hidden(#[from] Hidden),
}

/// The first character of a caller's text that a name may not hold
/// (`HiddenKind`), and where it is: the one rule for names and request ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "contains the {kind} U+{:04X} at position {position} (counting characters from 1); remove it",
    u32::from(*.ch)
)]
pub struct Hidden {
    pub kind: HiddenKind,
    pub ch: char,
    /// 1-based, in characters.
    pub position: usize,
}

impl Hidden {
    /// The first such character of `s`, if it holds one.
    pub fn find(s: &str) -> Option<Hidden> {
        s.chars().enumerate().find_map(|(i, ch)| {
            HiddenKind::of(ch).map(|kind| Hidden {
                kind,
                ch,
                position: i + 1,
            })
        })
    }
}

/// The kinds of character a name may not hold: each is invisible, or
/// changes how the text around it is shown (U+202E RIGHT-TO-LEFT OVERRIDE
/// reverses it), so a name holding one can pass for another in the console
/// and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenKind {
    /// General category Cc: C0 and C1 controls (tab, newline, escape, …).
    Control,
    /// General category Cf: zero-width characters, direction marks and
    /// overrides, the soft hyphen, tag characters, the byte order mark, …
    Format,
    /// U+2028 (general category Zl).
    LineSeparator,
    /// U+2029 (general category Zp).
    ParagraphSeparator,
}

impl HiddenKind {
    /// What `c` is, if a name may not hold it.
    pub fn of(c: char) -> Option<HiddenKind> {
        use unicode_general_category::{GeneralCategory, get_general_category};
        match get_general_category(c) {
            GeneralCategory::Control => Some(HiddenKind::Control),
            GeneralCategory::Format => Some(HiddenKind::Format),
            GeneralCategory::LineSeparator => Some(HiddenKind::LineSeparator),
            GeneralCategory::ParagraphSeparator => Some(HiddenKind::ParagraphSeparator),
            _ => None,
        }
    }
}

impl fmt::Display for HiddenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HiddenKind::Control => "control character",
            HiddenKind::Format => "invisible format character",
            HiddenKind::LineSeparator => "line separator",
            HiddenKind::ParagraphSeparator => "paragraph separator",
        })
    }
}

/// Display names and token names: at most 256 characters, none of them a
/// control or format character or a line or paragraph separator
/// (`HiddenKind`). Every place that accepts such a name checks it here.
pub fn validate_display_name(s: &str) -> Result<(), DisplayNameError> {
    if let Some(hidden) = Hidden::find(s) {
        return Err(hidden.into());
    }
    let len = s.chars().count();
    if len > MAX_DISPLAY_NAME {
        return Err(DisplayNameError::TooLong(len));
    }
    Ok(())
}

/// A display name or a token name that `validate_display_name` accepted:
/// the service takes names only in this form, so none reaches it unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// `value`, if it is a valid name; else why not, with the value back.
    pub fn parse(value: String) -> Result<Self, (DisplayNameError, String)> {
        match validate_display_name(&value) {
            Ok(()) => Ok(DisplayName(value)),
            Err(e) => Err((e, value)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<DisplayName> for String {
    fn from(name: DisplayName) -> String {
        name.0
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $(#[$ref_doc:meta])* $borrowed:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Borrowed, for the calls that take ids by reference.
            pub fn borrowed(&self) -> $borrowed<'_> {
                $borrowed(&self.0)
            }
        }

        $(#[$ref_doc])*
        ///
        /// Made only by validating (`parse`) or by borrowing a validated
        /// owned id, so holding one is proof the id is well formed; it
        /// costs no allocation, which the check path needs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $borrowed<'a>(&'a str);

        impl<'a> $borrowed<'a> {
            pub fn parse(s: &'a str) -> Result<Self, IdError> {
                validate_id(s)?;
                Ok(Self(s))
            }

            pub fn as_str(self) -> &'a str {
                self.0
            }

            pub fn to_owned(self) -> $name {
                $name(self.0.to_owned())
            }
        }

        impl fmt::Display for $borrowed<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
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
    AccountId,
    /// An account's identifier, validated, borrowed from the request.
    AccountIdRef
);
id_type!(
    /// A user's identifier within its account, validated.
    UserId,
    /// A user's identifier, validated, borrowed from the request.
    UserIdRef
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_is_the_documented_alphabet() {
        for c in (0u32..0x300).filter_map(char::from_u32) {
            let documented =
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':' | '+');
            let id = format!("a{c}b");
            assert_eq!(validate_id(&id).is_ok(), documented, "{c:?}");
            if !documented {
                assert_eq!(validate_id(&id), Err(IdError::BadChar(c)));
            }
        }
    }

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

    #[test]
    fn a_refused_id_character_is_shown_escaped() {
        let e = validate_id("a\u{1b}[2J").unwrap_err().to_string();
        assert!(e.starts_with("contains `\\u{1b}`;"), "{e}");
        let e = validate_id("a\u{202e}b").unwrap_err().to_string();
        assert!(e.starts_with("contains `\\u{202e}`;"), "{e}");
    }

    fn hidden(s: &str) -> Option<(HiddenKind, char, usize)> {
        match validate_display_name(s) {
            Err(DisplayNameError::Hidden(Hidden { kind, ch, position })) => {
                Some((kind, ch, position))
            }
            Err(e) => panic!("{s:?}: {e}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn display_names_accept_what_people_write() {
        for name in [
            "",
            "Ada Lovelace",
            "Zoë Ångström-Müller",
            "O'Brien, \"Bob\" (sales)",
            "محمد علي",
            "שרה כהן",
            "李小龙",
            "👩 Dev ✓",
        ] {
            assert_eq!(validate_display_name(name), Ok(()), "{name:?}");
        }
        // The price of refusing all of Cf, as issue 15 asks: the joiners
        // (U+200C, U+200D) that Persian words and emoji sequences use go too.
        assert_eq!(
            hidden("👩\u{200d}💻"),
            Some((HiddenKind::Format, '\u{200d}', 2))
        );
        assert!(validate_display_name(&"é".repeat(256)).is_ok());
        assert_eq!(
            validate_display_name(&"é".repeat(257)),
            Err(DisplayNameError::TooLong(257))
        );
    }

    #[test]
    fn display_names_refuse_invisible_and_direction_changing_characters() {
        use HiddenKind::*;
        // Cc
        assert_eq!(hidden("a\tb"), Some((Control, '\t', 2)));
        assert_eq!(hidden("\nab"), Some((Control, '\n', 1)));
        assert_eq!(hidden("ab\u{7f}"), Some((Control, '\u{7f}', 3)));
        assert_eq!(hidden("ab\u{85}"), Some((Control, '\u{85}', 3)));
        // Cf: every range the issue lists, first and last of each.
        for c in [
            '\u{ad}',
            '\u{600}',
            '\u{605}',
            '\u{61c}',
            '\u{6dd}',
            '\u{70f}',
            '\u{890}',
            '\u{891}',
            '\u{8e2}',
            '\u{180e}',
            '\u{200b}',
            '\u{200f}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{206f}',
            '\u{feff}',
            '\u{fff9}',
            '\u{fffb}',
            '\u{110bd}',
            '\u{110cd}',
            '\u{13430}',
            '\u{1343f}',
            '\u{1bca0}',
            '\u{1bca3}',
            '\u{1d173}',
            '\u{1d17a}',
            '\u{e0001}',
            '\u{e0020}',
            '\u{e007f}',
        ] {
            assert_eq!(hidden(&format!("ab{c}")), Some((Format, c, 3)), "{c:?}");
        }
        assert_eq!(hidden("a\u{2028}"), Some((LineSeparator, '\u{2028}', 2)));
        assert_eq!(
            hidden("a\u{2029}"),
            Some((ParagraphSeparator, '\u{2029}', 2))
        );
        // Their neighbours are not refused.
        for c in [
            '\u{ac}', '\u{ae}', '\u{2010}', '\u{2027}', '\u{202f}', '\u{fffc}',
        ] {
            assert_eq!(hidden(&format!("ab{c}")), None, "{c:?}");
        }
        // The position counts characters, not bytes, from 1; the first wins.
        assert_eq!(hidden("Zoë\u{202e}\u{200b}"), Some((Format, '\u{202e}', 4)));
        // Checked before the length, so a long name is not echoed with it.
        assert_eq!(
            hidden(&format!("{}\u{202e}", "x".repeat(300))),
            Some((Format, '\u{202e}', 301))
        );
    }

    #[test]
    fn the_message_names_the_character_and_where_it_is() {
        assert_eq!(
            validate_display_name("Ada\u{202e}nivel")
                .unwrap_err()
                .to_string(),
            "contains the invisible format character U+202E at position 4 (counting characters from 1); remove it"
        );
        assert_eq!(
            validate_display_name("a\u{e0041}").unwrap_err().to_string(),
            "contains the invisible format character U+E0041 at position 2 (counting characters from 1); remove it"
        );
        assert_eq!(
            validate_display_name("a\nb").unwrap_err().to_string(),
            "contains the control character U+000A at position 2 (counting characters from 1); remove it"
        );
    }
}
