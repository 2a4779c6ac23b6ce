//! The catalogue as the rules see it: product lines of ordered editions,
//! the highest tier each edition allows, the reports each tier opens, and
//! the data delay. Reading it from TOML is `crate::catalogue`'s job; this
//! module knows no file format.

use std::{sync::Arc, time::Duration};

use super::{ReportAccess, Tier};

/// The catalogue in force: fixed for the life of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    product_lines: Vec<ProductLine>,
    /// The moves between lines the catalogue allows (rule 15).
    migrations: Vec<Migration>,
    reports: Vec<Report>,
    data_delay: Duration,
    /// What a check answers in `reports`, computed once: indexed by the
    /// effective tier, then by whether historical data is ready. Shared
    /// down to the strings, so a check copies no report.
    access: [[Arc<[ReportAccess]>; 2]; 3],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductLine {
    pub id: String,
    pub display_name: String,
    /// In ascending order.
    pub editions: Vec<Edition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edition {
    pub id: String,
    /// The highest tier a holder may have; every lower tier is allowed too.
    pub max_tier: Tier,
}

impl Edition {
    pub fn allows(&self, tier: Tier) -> bool {
        tier.allowed_up_to(self.max_tier)
    }
}

/// A move of accounts from one product line to another (rule 15): each
/// licence maps to the edition `editions` names for it, or else to the
/// edition of the same name in `to`, if `to` has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub from: String,
    pub to: String,
    /// Explicit mappings, edition of `from` → edition of `to`.
    pub editions: Vec<(String, String)>,
}

impl Migration {
    /// The edition of line `to` that `edition` maps to, if any: the
    /// explicit mapping first, then the edition of the same name.
    pub fn map_edition<'a>(&'a self, to: &'a ProductLine, edition: &str) -> Option<&'a str> {
        if let Some((_, mapped)) = self.editions.iter().find(|(from, _)| from == edition) {
            return Some(mapped);
        }
        to.edition(edition).map(|e| e.id.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Live,
    Historical,
}

/// A report. Its strings are shared (`Arc<str>`): every check that opens it
/// hands them out, and sharing costs a reference count where a copy costs
/// an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: Arc<str>,
    pub display_name: Arc<str>,
    /// The lowest tier that opens this report.
    pub tier: Tier,
    pub kind: ReportKind,
}

impl Report {
    /// Rule 9: a tier opens its own reports and every lower tier's; none
    /// opens nothing.
    pub fn opened_by(&self, tier: Tier) -> bool {
        tier.grants_access() && self.tier <= tier
    }

    /// Rule 8: live reports can be opened at once, historical ones once the
    /// account's data is ready.
    pub fn available(&self, data_ready: bool) -> bool {
        self.kind == ReportKind::Live || data_ready
    }
}

impl Catalogue {
    /// A catalogue of these lines, the moves between them, and reports;
    /// each tier's report list for the check is computed here, once (rule
    /// 9). The caller (the TOML reader) has checked them: ids unique and
    /// well formed, editions in order, lines and editions of each move
    /// known, each pair of lines once.
    pub fn new(
        product_lines: Vec<ProductLine>,
        migrations: Vec<Migration>,
        reports: Vec<Report>,
        data_delay: Duration,
    ) -> Self {
        let access = Tier::ALL.map(|tier| {
            [false, true].map(|data_ready| {
                reports
                    .iter()
                    .filter(|r| r.opened_by(tier))
                    .map(|r| ReportAccess {
                        available: r.available(data_ready),
                        report: r.clone(),
                    })
                    .collect()
            })
        });
        Catalogue {
            product_lines,
            migrations,
            reports,
            data_delay,
            access,
        }
    }

    pub fn product_lines(&self) -> &[ProductLine] {
        &self.product_lines
    }

    pub fn product_line(&self, id: &str) -> Option<&ProductLine> {
        self.product_lines.iter().find(|l| l.id == id)
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The move from line `from` to line `to`, if the catalogue has one.
    pub fn migration(&self, from: &str, to: &str) -> Option<&Migration> {
        self.migrations
            .iter()
            .find(|m| m.from == from && m.to == to)
    }

    pub fn reports(&self) -> &[Report] {
        &self.reports
    }

    /// The reports `tier` opens (its own and every lower tier's), in the
    /// catalogue's order.
    pub fn reports_for(&self, tier: Tier) -> impl Iterator<Item = &Report> {
        self.reports.iter().filter(move |r| r.opened_by(tier))
    }

    /// The reports a check at `tier` answers, each with whether it can be
    /// opened now: the list computed once for this tier and readiness.
    pub fn report_access(&self, tier: Tier, data_ready: bool) -> Arc<[ReportAccess]> {
        Arc::clone(&self.access[tier as usize][usize::from(data_ready)])
    }

    /// The highest tier `edition` allows on product line `line` (rules 3
    /// and 4): none without an edition, and none for a line or an edition
    /// the catalogue does not hold (rule 13: a check never grants what the
    /// catalogue in force does not).
    pub fn max_tier(&self, line: &str, edition: Option<&str>) -> Tier {
        edition
            .and_then(|e| self.locate(line, e))
            .map_or(Tier::None, |(_, _, e)| e.max_tier)
    }

    /// Edition `edition` of line `line`, with where it is: the line's index
    /// in `product_lines()` and the edition's in the line's `editions`.
    /// None for a line or an edition the catalogue does not hold.
    pub fn locate(&self, line: &str, edition: &str) -> Option<(usize, usize, &Edition)> {
        let (l, found) = self
            .product_lines
            .iter()
            .enumerate()
            .find(|(_, l)| l.id == line)?;
        let (e, ed) = found
            .editions
            .iter()
            .enumerate()
            .find(|(_, e)| e.id == edition)?;
        Some((l, e, ed))
    }

    /// How long after activation historical data is ready (rule 8).
    pub fn data_delay(&self) -> Duration {
        self.data_delay
    }

    pub fn with_data_delay(mut self, delay: Duration) -> Self {
        self.data_delay = delay;
        self
    }
}

impl ProductLine {
    pub fn edition(&self, id: &str) -> Option<&Edition> {
        self.editions.iter().find(|e| e.id == id)
    }

    /// The highest tier `edition` allows in this line; none without an
    /// edition or for one the line does not hold.
    pub fn max_tier(&self, edition: Option<&str>) -> Tier {
        edition
            .and_then(|e| self.edition(e))
            .map_or(Tier::None, |e| e.max_tier)
    }

    /// The editions of this line that allow `tier`, in order.
    pub fn editions_allowing(&self, tier: Tier) -> Vec<&str> {
        self.editions
            .iter()
            .filter(|e| e.allows(tier))
            .map(|e| e.id.as_str())
            .collect()
    }

    pub fn edition_ids(&self) -> Vec<&str> {
        self.editions.iter().map(|e| e.id.as_str()).collect()
    }
}
