//! `rediss://`: the broker conformance suite over TLS to a private Redis whose certificate
//! comes from a CA of the test's own (with a client certificate Redis requires), and the
//! connections TLS must refuse: a server certificate no trusted CA signed, and a client
//! without the certificate Redis asks for.

mod support;

use agentwire_manager::{Broker, BrokerError};
use agentwire_redis::testing::{self, TlsRedis};
use agentwire_redis::{ConfigError, RedisBroker, RedisConfig, RedisTarget, RedisTls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_mutual_tls_with_a_private_ca() {
    let Some(redis) = testing::require("Redis over TLS", TlsRedis::start(true)) else {
        return;
    };
    let harness = support::tls_harness(&redis, "tls-conformance", redis.client_tls());
    support::run_conformance(&harness).await;
}

async fn connect(url: String, tls: RedisTls) -> Result<RedisBroker, BrokerError> {
    let config = RedisConfig::builder(RedisTarget::Standalone(url))
        .tls(tls)
        .build()
        .expect("valid config");
    RedisBroker::connect(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_no_trusted_ca_signed_is_refused() {
    let Some(redis) = testing::require("Redis over TLS", TlsRedis::start(false)) else {
        return;
    };
    // The system's CA certificates: none of them signed the test CA.
    let refused = connect(redis.url(), RedisTls::new()).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable { .. })),
        "{refused:?}"
    );
    // A CA of its own that is not the server's.
    let (other, _) = TlsRedis::start(false)
        .map(|r| (r.ca_pem.clone(), r))
        .expect("a second TLS Redis");
    let refused = connect(
        redis.url(),
        RedisTls::new().with_root_ca_pem(other).expect("a CA"),
    )
    .await;
    assert!(refused.is_err(), "another CA's server was trusted");
    // The server's own CA, no client certificate (this server asks for none).
    let trusted = RedisTls::new()
        .with_root_ca_pem(redis.ca_pem.clone())
        .expect("a CA");
    let broker = connect(redis.url(), trusted).await.expect("trusted");
    broker.health().await.expect("healthy over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_certificate_redis_requires_is_refused() {
    let Some(redis) = testing::require("Redis over TLS", TlsRedis::start(true)) else {
        return;
    };
    let no_identity = RedisTls::new()
        .with_root_ca_pem(redis.ca_pem.clone())
        .expect("a CA");
    let refused = connect(redis.url(), no_identity).await;
    assert!(refused.is_err(), "connected without a client certificate");
    let broker = connect(redis.url(), redis.client_tls())
        .await
        .expect("with the client certificate");
    broker.health().await.expect("healthy over mutual TLS");
}

#[test]
fn tls_settings_with_a_plain_address_are_refused() {
    let key = rcgen::KeyPair::generate().expect("key");
    let ca = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let tls = RedisTls::new().with_root_ca_pem(ca.pem()).expect("a CA");
    for target in [
        RedisTarget::Standalone("redis://127.0.0.1:6379".into()),
        RedisTarget::Cluster(vec![
            "rediss://127.0.0.1:7000".into(),
            "redis://127.0.0.1:7001".into(),
        ]),
    ] {
        let refused = RedisConfig::builder(target).tls(tls.clone()).build();
        let Err(ConfigError::Tls { reason, .. }) = &refused else {
            panic!("{refused:?}");
        };
        assert!(reason.contains("rediss://"), "{reason}");
    }
    RedisConfig::builder(RedisTarget::Standalone("rediss://127.0.0.1:6379".into()))
        .tls(tls)
        .build()
        .expect("TLS settings with a rediss:// address");
    RedisConfig::builder(RedisTarget::Standalone("rediss://127.0.0.1:6379".into()))
        .build()
        .expect("rediss:// with the system's CA certificates");
}
