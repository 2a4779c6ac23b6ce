//! Reading the catalogue: which editions exist in each product line, the
//! highest tier each allows, and which reports each tier opens. It is data
//! (TOML), checked once at start-up; a bad file stops start-up with the line
//! and the problem. The model it builds, and the rules that read it, are the
//! domain's (`domain::catalogue`); this module only reads files.

use std::{collections::HashSet, ops::Range, path::Path};

use serde::Deserialize;
use toml::Spanned;

pub use crate::domain::catalogue::{
    Catalogue, Edition, Migration, ProductLine, Report, ReportKind,
};
use crate::domain::{Tier, validate_id};

/// The catalogue built into the binary.
pub const DEFAULT_TOML: &str = include_str!("../catalogue/default.toml");

/// Why a catalogue file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read catalogue file `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalogue `{origin}`: {message}")]
    Parse { origin: String, message: String },
    #[error("catalogue `{origin}` line {line}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        message: String,
    },
}

impl Catalogue {
    /// The catalogue built into the binary.
    pub fn builtin() -> Result<Self, CatalogueError> {
        Self::from_toml(DEFAULT_TOML, "built-in")
    }

    pub fn from_file(path: &Path) -> Result<Self, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks a catalogue; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, CatalogueError> {
        let raw: RawCatalogue = toml::from_str(text).map_err(|e| CatalogueError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |span: Range<usize>, message: String| CatalogueError::Invalid {
            origin: origin.to_owned(),
            line: line_of(text, span.start),
            message,
        };

        let data_delay = humantime::parse_duration(raw.data_delay.get_ref()).map_err(|e| {
            invalid(
                raw.data_delay.span(),
                format!(
                    "data_delay `{}` is not a duration ({e}); write it like `48h` or `90m`",
                    raw.data_delay.get_ref()
                ),
            )
        })?;

        if raw.product_line.is_empty() {
            return Err(invalid(
                0..0,
                "no product lines; add at least one [[product_line]]".to_owned(),
            ));
        }
        let mut product_lines = Vec::with_capacity(raw.product_line.len());
        let mut line_ids = HashSet::new();
        for line in raw.product_line {
            let id =
                checked_id(&line.id, "product line id").map_err(|m| invalid(line.id.span(), m))?;
            if !line_ids.insert(id.clone()) {
                return Err(invalid(
                    line.id.span(),
                    format!("product line `{id}` is listed twice"),
                ));
            }
            if line.editions.is_empty() {
                return Err(invalid(
                    line.id.span(),
                    format!("product line `{id}` has no editions; list them in ascending order"),
                ));
            }
            let mut editions: Vec<Edition> = Vec::with_capacity(line.editions.len());
            for edition in line.editions {
                let eid = checked_id(&edition.id, "edition id")
                    .map_err(|m| invalid(edition.id.span(), m))?;
                if editions.iter().any(|e| e.id == eid) {
                    return Err(invalid(
                        edition.id.span(),
                        format!("edition `{eid}` is listed twice in product line `{id}`"),
                    ));
                }
                let max_tier = parse_tier(&edition.max_tier)
                    .map_err(|m| invalid(edition.max_tier.span(), m))?;
                editions.push(Edition { id: eid, max_tier });
            }
            product_lines.push(ProductLine {
                id,
                display_name: line.display_name.unwrap_or_default(),
                editions,
            });
        }

        let mut reports = Vec::with_capacity(raw.report.len());
        let mut report_ids = HashSet::new();
        for report in raw.report {
            let id =
                checked_id(&report.id, "report id").map_err(|m| invalid(report.id.span(), m))?;
            if !report_ids.insert(id.clone()) {
                return Err(invalid(
                    report.id.span(),
                    format!("report `{id}` is listed twice"),
                ));
            }
            let tier = parse_tier(&report.tier).map_err(|m| invalid(report.tier.span(), m))?;
            if tier == Tier::None {
                return Err(invalid(
                    report.tier.span(),
                    format!(
                        "report `{id}` has tier `none`; a report needs essentials or supervisor"
                    ),
                ));
            }
            let kind = match report.kind.get_ref().as_str() {
                "live" => ReportKind::Live,
                "historical" => ReportKind::Historical,
                other => {
                    return Err(invalid(
                        report.kind.span(),
                        format!("report kind `{other}` is unknown; use `live` or `historical`"),
                    ));
                }
            };
            reports.push(Report {
                id: id.into(),
                display_name: report.display_name.into(),
                tier,
                kind,
            });
        }

        let migrations =
            migrations(raw.migrations, &product_lines).map_err(|(span, m)| invalid(span, m))?;
        Ok(Catalogue::new(
            product_lines,
            migrations,
            reports,
            data_delay,
        ))
    }
}

/// The `[[migrations]]` table (rule 15): each names two known, different
/// lines, at most once per pair; each explicit mapping an edition of each
/// line, each edition of `from` at most once.
fn migrations(
    raw: Vec<RawMigration>,
    lines: &[ProductLine],
) -> Result<Vec<Migration>, (Range<usize>, String)> {
    let known = |id: &Spanned<String>, what: &str| {
        lines.iter().find(|l| l.id == *id.get_ref()).ok_or_else(|| {
            let valid: Vec<&str> = lines.iter().map(|l| l.id.as_str()).collect();
            (
                id.span(),
                format!(
                    "migration {what} `{}` is not a product line; use one of {}",
                    id.get_ref(),
                    valid.join(", ")
                ),
            )
        })
    };
    let mut migrations: Vec<Migration> = Vec::with_capacity(raw.len());
    for m in raw {
        let from = known(&m.from, "from")?;
        let to = known(&m.to, "to")?;
        if from.id == to.id {
            return Err((
                m.to.span(),
                format!(
                    "migration from `{}` to itself; `to` must name another product line",
                    from.id
                ),
            ));
        }
        if migrations
            .iter()
            .any(|e| e.from == from.id && e.to == to.id)
        {
            return Err((
                m.from.span(),
                format!(
                    "the migration from `{}` to `{}` is listed twice",
                    from.id, to.id
                ),
            ));
        }
        let mut editions: Vec<(String, String)> = Vec::with_capacity(m.editions.len());
        for e in m.editions {
            let (old, new) = (e.from.get_ref(), e.to.get_ref());
            if from.edition(old).is_none() {
                return Err((
                    e.from.span(),
                    format!(
                        "edition `{old}` is not in product line `{}`; use one of {}",
                        from.id,
                        from.edition_ids().join(", ")
                    ),
                ));
            }
            if to.edition(new).is_none() {
                return Err((
                    e.to.span(),
                    format!(
                        "edition `{new}` is not in product line `{}`; use one of {}",
                        to.id,
                        to.edition_ids().join(", ")
                    ),
                ));
            }
            if editions.iter().any(|(o, _)| o == old) {
                return Err((
                    e.from.span(),
                    format!(
                        "edition `{old}` is mapped twice in the migration from `{}` to `{}`",
                        from.id, to.id
                    ),
                ));
            }
            editions.push((old.clone(), new.clone()));
        }
        migrations.push(Migration {
            from: from.id.clone(),
            to: to.id.clone(),
            editions,
        });
    }
    Ok(migrations)
}

fn checked_id(id: &Spanned<String>, what: &str) -> Result<String, String> {
    let id = id.get_ref();
    validate_id(id).map_err(|e| format!("{what} `{id}` {e}"))?;
    Ok(id.clone())
}

fn parse_tier(tier: &Spanned<String>) -> Result<Tier, String> {
    tier.get_ref().parse()
}

/// The 1-based line of byte offset `at` in `text` (for TOML errors, here
/// and in the command line's config file).
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(at)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    data_delay: Spanned<String>,
    #[serde(default)]
    product_line: Vec<RawProductLine>,
    #[serde(default)]
    report: Vec<RawReport>,
    #[serde(default)]
    migrations: Vec<RawMigration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    from: Spanned<String>,
    to: Spanned<String>,
    /// Explicit mappings; an edition not listed maps to the edition of the
    /// same name.
    #[serde(default)]
    editions: Vec<RawEditionMapping>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEditionMapping {
    from: Spanned<String>,
    to: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProductLine {
    id: Spanned<String>,
    display_name: Option<String>,
    editions: Vec<RawEdition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdition {
    id: Spanned<String>,
    max_tier: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    id: Spanned<String>,
    display_name: String,
    tier: Spanned<String>,
    kind: Spanned<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_holds_the_documented_rules() {
        let c = Catalogue::builtin().unwrap();
        let vo = c.product_line("virtual-office").unwrap();
        assert_eq!(
            vo.editions_allowing(Tier::Essentials),
            ["X2", "X5", "X6", "X8", "X8e"]
        );
        assert_eq!(vo.editions_allowing(Tier::Supervisor), ["X6", "X8", "X8e"]);
        let work = c.product_line("work").unwrap();
        assert_eq!(
            work.edition_ids(),
            ["X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8", "X8e"]
        );
        assert_eq!(
            work.editions_allowing(Tier::Supervisor),
            ["X4", "X5", "X6", "X7", "X8", "X8e"]
        );
        assert_eq!(c.data_delay(), std::time::Duration::from_secs(48 * 3600));
        assert_eq!(c.reports_for(Tier::None).count(), 0);
        assert_eq!(c.reports_for(Tier::Essentials).count(), 7);
        assert_eq!(c.reports_for(Tier::Supervisor).count(), 12);
        // A check's lists are the same reports, each marked as it can be
        // opened: live ones at once, historical ones once data is ready.
        for tier in Tier::ALL {
            for ready in [false, true] {
                let access = c.report_access(tier, ready);
                let ids: Vec<_> = access.iter().map(|a| &a.report).collect();
                assert_eq!(ids, c.reports_for(tier).collect::<Vec<_>>());
                for a in access.iter() {
                    assert_eq!(a.available, ready || a.report.kind == ReportKind::Live);
                }
            }
        }
    }

    fn error_of(text: &str) -> String {
        Catalogue::from_toml(text, "t.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let dup = "data_delay = \"1h\"\n[[product_line]]\nid = \"work\"\neditions = [{ id = \"X1\", max_tier = \"essentials\" },\n  { id = \"X1\", max_tier = \"supervisor\" }]\n";
        assert_eq!(
            error_of(dup),
            "catalogue `t.toml` line 5: edition `X1` is listed twice in product line `work`"
        );
        let bad_tier = "data_delay = \"1h\"\n[[product_line]]\nid = \"work\"\neditions = [{ id = \"X1\", max_tier = \"gold\" }]\n";
        assert_eq!(
            error_of(bad_tier),
            "catalogue `t.toml` line 4: unknown tier `gold`; use one of none, essentials, supervisor"
        );
        let bad_delay = "data_delay = \"soon\"\n[[product_line]]\nid = \"w\"\neditions = [{ id = \"X1\", max_tier = \"none\" }]\n";
        assert!(
            error_of(bad_delay)
                .starts_with("catalogue `t.toml` line 1: data_delay `soon` is not a duration")
        );
        let unknown_key = "data_delay = \"1h\"\ncolour = \"red\"\n";
        let msg = error_of(unknown_key);
        assert!(msg.contains("line 2") && msg.contains("colour"), "{msg}");
        assert!(error_of("data_delay = \"1h\"\n").contains("no product lines"));
    }

    #[test]
    fn builtin_moves_virtual_office_to_work_by_name() {
        let c = Catalogue::builtin().unwrap();
        let m = c.migration("virtual-office", "work").unwrap();
        let work = c.product_line("work").unwrap();
        for edition in c.product_line("virtual-office").unwrap().edition_ids() {
            assert_eq!(m.map_edition(work, edition), Some(edition));
        }
        assert!(c.migration("work", "virtual-office").is_none());
    }

    /// A `[[migrations]]` entry naming an unknown line or edition, the same
    /// line twice, or a pair or mapping twice is refused with its line.
    #[test]
    fn migration_errors_name_the_line() {
        let with = |entry: &str| {
            error_of(&format!(
                "{}\n[[migrations]]\nfrom = \"virtual-office\"\n{entry}",
                DEFAULT_TOML
            ))
        };
        let first = line_of(DEFAULT_TOML, DEFAULT_TOML.len()) + 2;
        let cases = [
            (
                "to = \"gold\"\n",
                first + 1,
                "migration to `gold` is not a product line; use one of virtual-office, work",
            ),
            (
                "to = \"virtual-office\"\n",
                first + 1,
                "migration from `virtual-office` to itself; `to` must name another product line",
            ),
            (
                "to = \"work\"\n",
                first,
                "the migration from `virtual-office` to `work` is listed twice",
            ),
        ];
        for (entry, line, message) in cases {
            assert_eq!(
                with(entry),
                format!("catalogue `t.toml` line {line}: {message}")
            );
        }
        let base = DEFAULT_TOML.replace(
            "[[migrations]]\nfrom = \"virtual-office\"\nto = \"work\"\n",
            "",
        );
        assert_ne!(base, DEFAULT_TOML);
        assert!(
            Catalogue::from_toml(&base, "t")
                .unwrap()
                .migrations()
                .is_empty()
        );
        let mapping = |editions: &str| {
            error_of(&format!(
                "{base}\n[[migrations]]\nfrom = \"virtual-office\"\nto = \"work\"\neditions = [\n{editions}]\n"
            ))
        };
        let at = line_of(&base, base.len()) + 5;
        assert_eq!(
            mapping("{ from = \"X1\", to = \"X2\" }\n"),
            format!(
                "catalogue `t.toml` line {at}: edition `X1` is not in product line `virtual-office`; use one of X2, X5, X6, X8, X8e"
            )
        );
        assert_eq!(
            mapping("{ from = \"X5\", to = \"X9\" }\n"),
            format!(
                "catalogue `t.toml` line {at}: edition `X9` is not in product line `work`; use one of X1, X2, X3, X4, X5, X6, X7, X8, X8e"
            )
        );
        assert_eq!(
            mapping("{ from = \"X5\", to = \"X4\" },\n{ from = \"X5\", to = \"X3\" }\n"),
            format!(
                "catalogue `t.toml` line {}: edition `X5` is mapped twice in the migration from `virtual-office` to `work`",
                at + 1
            )
        );
        let mapped = Catalogue::from_toml(
            &format!("{base}\n[[migrations]]\nfrom = \"virtual-office\"\nto = \"work\"\neditions = [{{ from = \"X5\", to = \"X4\" }}]\n"),
            "t",
        )
        .unwrap();
        let m = mapped.migration("virtual-office", "work").unwrap();
        let work = mapped.product_line("work").unwrap();
        assert_eq!(m.map_edition(work, "X5"), Some("X4"));
        assert_eq!(m.map_edition(work, "X6"), Some("X6"));
    }
}
