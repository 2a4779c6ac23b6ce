use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// An analytics tier. Ordered: each tier includes everything below it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Tier {
    /// "None, do not allow access".
    #[default]
    None,
    Essentials,
    Supervisor,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::None, Tier::Essentials, Tier::Supervisor];

    /// Rule 3's order: an edition that allows `max` allows every tier up to
    /// it (`Edition::allows` is this, for an edition's own highest tier).
    pub fn allowed_up_to(self, max: Tier) -> bool {
        self <= max
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::None => "none",
            Tier::Essentials => "essentials",
            Tier::Supervisor => "supervisor",
        }
    }

    /// Whether this tier opens the dashboard at all.
    pub fn grants_access(self) -> bool {
        self != Tier::None
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown tier `{s}`; use one of none, essentials, supervisor"))
    }
}
