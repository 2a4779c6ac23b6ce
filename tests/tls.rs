//! TLS with generated certificates, and mutual TLS refusing a client
//! without a certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::path::Path;

use common::process::OutputWithin;

use entitled::{
    catalogue::Catalogue,
    proto::v1 as pb,
    server::{Application, Config, TlsFiles},
    service::OPERATOR_TOKEN_FILE,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA, a server certificate for `localhost` and a client certificate, as
/// PEM files in `dir`.
struct Pki {
    ca: String,
    client_cert: String,
    client_key: String,
}

fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["gateway.example".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        ca: ca.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// Starts a TLS server; returns its address and the operator token.
async fn start(
    dir: &Path,
    require_client_cert: bool,
) -> (
    std::net::SocketAddr,
    String,
    tokio::sync::oneshot::Sender<()>,
) {
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("data"),
        Catalogue::builtin().unwrap(),
    );
    config.tls = Some(TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: require_client_cert.then(|| dir.join("ca.pem")),
    });
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = rx.await;
    }));
    let secret = std::fs::read_to_string(dir.join("data").join(OPERATOR_TOKEN_FILE)).unwrap();
    (addr, secret.trim().to_owned(), tx)
}

async fn catalogue_over(
    channel: Channel,
    secret: &str,
) -> Result<pb::GetCatalogueResponse, tonic::Status> {
    common::clients(&channel, Some(secret))
        .catalogue
        .get_catalogue(pb::GetCatalogueRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn serves_tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (addr, secret, _stop) = start(dir.path(), false).await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let catalogue = catalogue_over(channel, &secret).await.unwrap();
    assert_eq!(catalogue.product_lines.len(), 2);

    // A plaintext client gets nowhere.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    match plain {
        Err(_) => {}
        Ok(channel) => assert!(catalogue_over(channel, &secret).await.is_err()),
    }
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (addr, secret, _stop) = start(dir.path(), true).await;
    let base = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    let without = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(base.clone())
        .unwrap()
        .connect()
        .await;
    match without {
        Err(_) => {}
        Ok(channel) => assert!(
            catalogue_over(channel, &secret).await.is_err(),
            "a client without a certificate was served"
        ),
    }

    let with = base.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(with)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(catalogue_over(channel, &secret).await.is_ok());
}

/// `entitled backup` over TLS, trusting the CA given with `--tls-ca`.
#[tokio::test]
async fn backup_over_tls_trusts_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let (addr, secret, _stop) = start(dir.path(), false).await;
    let out = dir.path().join("b");
    let run = |extra: Vec<String>| {
        let mut args = vec![
            "backup".to_owned(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--server".into(),
            format!("https://localhost:{}", addr.port()),
        ];
        args.extend(extra);
        let secret = secret.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_entitled"))
                .args(args)
                .env("RUST_LOG", "off")
                .env("ENTITLED_TOKEN", secret)
                .output_within()
        })
    };
    let without = run(vec![]).await.unwrap();
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("pass the CA certificate"), "{stderr}");

    let ca = dir.path().join("ca.pem");
    let with = run(vec!["--tls-ca".into(), ca.to_str().unwrap().into()])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&with.stderr);
    assert_eq!(with.status.code(), Some(0), "{stderr}");
    let summary = entitled::store::verify(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(summary.revision, 1);
}
