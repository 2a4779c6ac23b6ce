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

type Headers = Vec<(&'static str, String)>;

/// A single check is answered by `grpc/unary.rs`, not tonic's unary
/// machinery: on the wire it must be what a gRPC server sends, and refuse
/// what tonic refused, with the same codes.
#[tokio::test]
async fn a_check_on_the_wire_is_grpc_and_refuses_what_tonic_refused() {
    use prost::Message;

    let app = TestApp::spawn().await;
    app.create_account("work", "work").await;
    app.put_user("work", "ada").await;
    app.set("work", "ada", Some("X8"), Some(T::Supervisor))
        .await
        .unwrap();
    let path = "/entitled.v1.AccessService/CheckAnalyticsAccess";
    let bearer = format!("Bearer {}", app.operator_secret);
    let auth = [("authorization", bearer.as_str())];
    let request = pb::CheckAnalyticsAccessRequest {
        account_id: "work".into(),
        user_id: "ada".into(),
        min_revision: 0,
    };
    let message = request.encode_to_vec();
    let len = message.len() as u32;
    let call = |headers: Headers, body: Vec<u8>| {
        let addr = app.addr;
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            common::raw::call(addr, path, &refs, body).await.unwrap()
        }
    };
    let with_auth = |extra: &[(&'static str, &str)]| {
        let mut headers: Headers = auth.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
        headers.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
        headers
    };

    // The answer: one message, its prefix uncompressed, status 0 in the
    // trailers, and the same answer the generated client decodes.
    let answer = call(with_auth(&[]), common::raw::frame(len, &message)).await;
    assert_eq!(answer.grpc_status, Some(0), "{answer:?}");
    assert_eq!(answer.body[0], 0, "compressed flag");
    let declared = u32::from_be_bytes(answer.body[1..5].try_into().unwrap()) as usize;
    assert_eq!(declared, answer.body.len() - 5, "one message, whole");
    let decoded = pb::CheckAnalyticsAccessResponse::decode(&answer.body[5..]).unwrap();
    let through_tonic = app
        .access
        .clone()
        .check_analytics_access(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decoded, through_tonic);
    assert!(decoded.allowed && !decoded.reports.is_empty());

    let framed = common::raw::frame(len, &message);

    // Refusals, each with tonic's code.
    let internal = Code::Internal as i32;
    // What, the headers, the body, the code, words of the message.
    type Case = (&'static str, Headers, Vec<u8>, i32, &'static str);
    let cases: Vec<Case> = vec![
        (
            "no message",
            with_auth(&[]),
            Vec::new(),
            internal,
            "Missing request message",
        ),
        (
            "a cut message",
            with_auth(&[]),
            common::raw::frame(len + 10, &message),
            internal,
            "Unexpected EOF",
        ),
        (
            "two messages",
            with_auth(&[]),
            [framed.clone(), framed.clone()].concat(),
            internal,
            "one request message",
        ),
        (
            "the compressed flag without an encoding",
            with_auth(&[]),
            {
                let mut f = framed.clone();
                f[0] = 1;
                f
            },
            internal,
            "compressed-flag",
        ),
        (
            "an encoding the server does not take",
            with_auth(&[("grpc-encoding", "gzip")]),
            framed.clone(),
            Code::Unimplemented as i32,
            "gzip",
        ),
        (
            "a declared length past the limit",
            with_auth(&[]),
            common::raw::frame(u32::MAX, &message),
            Code::OutOfRange as i32,
            "too large",
        ),
        (
            "a malformed message",
            with_auth(&[]),
            common::raw::frame(3, &[0xff, 0xff, 0xff]),
            internal,
            "decode",
        ),
        (
            "no token",
            Vec::new(),
            framed.clone(),
            Code::Unauthenticated as i32,
            "token",
        ),
    ];
    for (what, headers, body, code, words) in cases {
        let answer = call(headers, body).await;
        assert_eq!(answer.grpc_status, Some(code), "{what}: {answer:?}");
        // `grpc-message` is percent-encoded.
        let message = answer.message.replace("%20", " ");
        assert!(message.contains(words), "{what}: {answer:?}");
    }
}
