//! The fast path's answers against plainly built ones, byte for byte.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;

use super::Answers;
use crate::{
    catalogue::Catalogue,
    domain::{Decision, Denial, ScopeKind, ScopeRef, SupervisorScope, Text, Tier},
    proto::{BatchAnswer, v1 as pb},
};

fn catalogue() -> Catalogue {
    Catalogue::builtin().expect("the built-in catalogue loads")
}

fn answers(catalogue: &Catalogue) -> Answers {
    Answers::new(
        Tier::ALL
            .into_iter()
            .flat_map(|t| [false, true].map(|ready| catalogue.report_access(t, ready))),
    )
}

/// The scopes a decision of `tier` can carry: none below Supervisor; for
/// Supervisor the whole account or a list of groups (and none, which no
/// decision carries, but which must still encode alike).
fn scopes(tier: Tier) -> Vec<Option<SupervisorScope>> {
    if tier != Tier::Supervisor {
        return vec![None];
    }
    let list = SupervisorScope::Only(
        [
            (ScopeKind::Site, "S1".to_owned()),
            (ScopeKind::UserGroup, "g.2@x".to_owned()),
            (ScopeKind::RingGroup, "r:3".to_owned()),
            (ScopeKind::CallQueue, "q".repeat(128)),
        ]
        .into_iter()
        .map(|(kind, id)| ScopeRef { kind, id })
        .collect(),
    );
    vec![None, Some(SupervisorScope::WholeAccount), Some(list)]
}

/// Every decision shape: tier × data ready × denial (none and each
/// reason), with and without an edition and a data time, and for
/// Supervisor each kind of scope.
fn decisions(catalogue: &Catalogue) -> Vec<Decision> {
    let denials = [
        None,
        Some(Denial::AccountNotFound),
        Some(Denial::UserNotFound),
        Some(Denial::NoEdition),
        Some(Denial::AnalyticsNotEnabled),
        Some(Denial::EditionNotEligible),
    ];
    let mut out = Vec::new();
    for tier in Tier::ALL {
        for data_ready in [false, true] {
            for denial in denials {
                for (edition, at) in [
                    (
                        Some(Text::Shared(Arc::from("X8"))),
                        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                    ),
                    (None, None),
                ] {
                    for supervisor_scope in scopes(tier) {
                        out.push(Decision {
                            allowed: tier.grants_access(),
                            tier,
                            stored_tier: Tier::Supervisor,
                            edition: edition.clone(),
                            denial,
                            data_available_at: at,
                            data_ready,
                            reports: catalogue.report_access(tier, data_ready),
                            revision: 4242,
                            reason: format!("{tier} because of `ada` — é").into(),
                            supervisor_scope,
                        });
                    }
                }
            }
        }
    }
    out
}

#[test]
fn a_check_s_answer_is_the_plain_answer_s_bytes_in_every_case() {
    let catalogue = catalogue();
    let answers = answers(&catalogue);
    let all = decisions(&catalogue);
    assert_eq!(all.len(), (1 + 1 + 3) * 2 * 6 * 2);
    assert!(
        all.iter()
            .any(|d| matches!(d.supervisor_scope, Some(SupervisorScope::Only(_))))
    );
    for d in all {
        let plain = pb::CheckAnalyticsAccessResponse::from(d.clone()).encode_to_vec();
        let fast = answers.answer(d.clone());
        assert_eq!(fast.encode_to_vec(), plain, "{d:?}");
        assert_eq!(fast.encoded_len(), plain.len(), "{d:?}");
    }
}

#[test]
fn a_decision_with_a_list_not_the_catalogue_s_is_still_answered_right() {
    let catalogue = catalogue();
    let answers = answers(&catalogue);
    for mut d in decisions(&catalogue) {
        // A copy: the same reports in another allocation.
        d.reports = d.reports.iter().cloned().collect();
        let plain = pb::CheckAnalyticsAccessResponse::from(d.clone()).encode_to_vec();
        assert_eq!(answers.answer(d).encode_to_vec(), plain);
    }
}

#[test]
fn a_batch_s_answer_is_the_plain_answer_s_bytes_with_and_without_reports() {
    let catalogue = catalogue();
    let answers = answers(&catalogue);
    let error = pb::ItemError {
        code: 3,
        message: "account_id `` is empty".to_owned(),
    };
    for omit_reports in [false, true] {
        let mut fast = BatchAnswer {
            results: Vec::new(),
            revision: 4242,
        };
        let mut plain = pb::BatchCheckAnalyticsAccessResponse {
            results: Vec::new(),
            revision: 4242,
        };
        for (i, d) in decisions(&catalogue).into_iter().enumerate() {
            if i % 5 == 0 {
                fast.results.push(Err(error.clone()));
                plain.results.push(pb::CheckResult {
                    outcome: Some(pb::check_result::Outcome::Error(error.clone())),
                });
            }
            let mut answer = pb::CheckAnalyticsAccessResponse::from(d.clone());
            if omit_reports {
                answer.reports.clear();
            }
            fast.results.push(Ok(answers.item(d, omit_reports)));
            plain.results.push(pb::CheckResult {
                outcome: Some(pb::check_result::Outcome::Answer(answer)),
            });
        }
        let bytes = plain.encode_to_vec();
        assert_eq!(fast.encode_to_vec(), bytes, "omit_reports {omit_reports}");
        assert_eq!(fast.encoded_len(), bytes.len());
    }
}
