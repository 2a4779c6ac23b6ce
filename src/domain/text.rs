//! `Text`: a string an answer carries, either made once and shared by every
//! answer that gives it, or made for this one answer.
//!
//! Why: nearly every check answers with an edition the catalogue names and
//! a reason that names only that edition and tiers. Made once per edition
//! (`service::check`'s texts) and shared, they cost a check a reference
//! count each instead of an allocation and a copy (callgrind: about 600
//! instructions a check). Reasons that name a user or an account are made
//! for their answer.

use std::{ops::Deref, sync::Arc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Shared(Arc<str>),
    Made(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Shared(s) => s,
            Text::Made(s) => s,
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Made(String::new())
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        match text {
            Text::Shared(s) => s.as_ref().to_owned(),
            Text::Made(s) => s,
        }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Made(s)
    }
}
