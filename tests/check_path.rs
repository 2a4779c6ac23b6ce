//! The check's fast path through the server: a batch leaves out its
//! answers' reports when, and only when, the caller asks with
//! `entitled-omit-reports`. (That its answers are byte for byte the plain
//! ones is `grpc/convert/tests.rs`; the other check tests run through it.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{T, TestApp};
use entitled::proto::v1 as pb;
use pb::check_result::Outcome;
use tonic::{Code, Status};

fn answer(result: &pb::CheckResult) -> &pb::CheckAnalyticsAccessResponse {
    match &result.outcome {
        Some(Outcome::Answer(a)) => a,
        other => panic!("expected an answer, got {other:?}"),
    }
}

async fn batch(
    app: &TestApp,
    omit_reports: Option<&'static str>,
) -> Result<pb::BatchCheckAnalyticsAccessResponse, Status> {
    let items = [("work", "ada"), ("work", "bob"), ("work", "nobody")]
        .map(|(account, user)| pb::CheckItem {
            account_id: account.into(),
            user_id: user.into(),
        })
        .to_vec();
    let mut request = tonic::Request::new(pb::BatchCheckAnalyticsAccessRequest {
        items,
        min_revision: 0,
    });
    if let Some(value) = omit_reports {
        request
            .metadata_mut()
            .insert("entitled-omit-reports", value.parse().unwrap());
    }
    app.access
        .clone()
        .batch_check_analytics_access(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_batch_leaves_out_reports_only_when_asked() {
    let app = TestApp::spawn().await;
    app.create_account("work", "work").await;
    for user in ["ada", "bob"] {
        app.put_user("work", user).await;
    }
    app.set("work", "ada", Some("X8"), Some(T::Supervisor))
        .await
        .unwrap();
    app.set("work", "bob", Some("X2"), Some(T::Essentials))
        .await
        .unwrap();

    let full = batch(&app, None).await.unwrap();
    assert_eq!(batch(&app, Some("false")).await.unwrap(), full);
    let compact = batch(&app, Some("true")).await.unwrap();
    assert_eq!(compact.revision, full.revision);
    assert_eq!(compact.results.len(), full.results.len());
    for (full, compact) in full.results.iter().zip(&compact.results) {
        let mut expected = answer(full).clone();
        expected.reports.clear();
        assert_eq!(answer(compact), &expected);
    }
    // Ada's and Bob's full answers have reports, so the above is not vacuous.
    assert!(
        full.results[..2]
            .iter()
            .all(|r| !answer(r).reports.is_empty())
    );

    let refused = batch(&app, Some("yes")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("entitled-omit-reports"),
        "{}",
        refused.message()
    );
}
