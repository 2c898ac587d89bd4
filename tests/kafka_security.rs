//! Kafka security as this build supports it: a client is created for every
//! security protocol and SASL mechanism, and SASL credentials really reach
//! the broker. librdkafka's mock cluster speaks no SASL, so the last test
//! uses a listener that answers the SASL handshake as a broker would and
//! records what the client authenticates with.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::kafka_wire::{Request, api_versions_answer, parse_request, read_frame, write_frame};
use orchestrator::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

fn config(pairs: &[(&str, &str)]) -> KafkaConfig {
    KafkaConfig::from_vars(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).unwrap()
}

#[test]
fn a_client_is_created_for_every_protocol_and_mechanism() {
    let mut cases = vec![vec![("KAFKA_SECURITY_PROTOCOL", "plaintext")], vec![("KAFKA_SECURITY_PROTOCOL", "ssl")]];
    for protocol in ["sasl_plaintext", "sasl_ssl"] {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            cases.push(vec![
                ("KAFKA_SECURITY_PROTOCOL", protocol),
                ("KAFKA_SASL_MECHANISM", mechanism),
                ("KAFKA_SASL_USERNAME", "user"),
                ("KAFKA_SASL_PASSWORD", "pass"),
            ]);
        }
        // OAUTHBEARER with librdkafka's built-in unsecured JWT (OIDC needs libcurl, not built in).
        cases.push(vec![
            ("KAFKA_SECURITY_PROTOCOL", protocol),
            ("KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
            ("KAFKA_PROPERTY_ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT", "true"),
            ("KAFKA_PROPERTY_SASL_OAUTHBEARER_CONFIG", "principal=orchestrator"),
        ]);
    }
    for mut case in cases {
        case.push(("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"));
        let config = config(&case);
        let producer: Result<FutureProducer, _> = config.producer_config().create();
        assert!(producer.is_ok(), "{case:?}: {:?}", producer.err());
        let consumer: Result<BaseConsumer, _> = config.consumer_config("g").create();
        assert!(consumer.is_ok(), "{case:?}: {:?}", consumer.err());
    }
}

/// What a SASL/PLAIN broker sees: ApiVersions (answered with SaslHandshake
/// v1 and SaslAuthenticate v0), the handshake, then the authenticate request.
/// Returns the mechanism and the PLAIN token.
fn fake_sasl_broker(listener: TcpListener) -> (String, Vec<u8>) {
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut mechanism = String::new();
    loop {
        let frame = read_frame(&mut stream).expect("the client stays until authenticated");
        let Request { key, version, correlation, body } = parse_request(&frame);
        match key {
            18 => {
                // ApiVersions: SaslHandshake v0-1 and SaslAuthenticate v0.
                let answer = api_versions_answer(version, &[(18, 0, 3), (17, 0, 1), (36, 0, 0)]);
                write_frame(&mut stream, &correlation, &answer);
            }
            17 => {
                // SaslHandshake: the mechanism; answer "no error, PLAIN enabled".
                mechanism = String::from_utf8(body[2..].to_vec()).unwrap();
                let mut answer = 0i16.to_be_bytes().to_vec();
                answer.extend(1i32.to_be_bytes());
                answer.extend(5i16.to_be_bytes());
                answer.extend(b"PLAIN");
                write_frame(&mut stream, &correlation, &answer);
            }
            36 => {
                // SaslAuthenticate v0: auth_bytes as BYTES (int32 length).
                let token = body[4..].to_vec();
                let mut answer = 0i16.to_be_bytes().to_vec();
                answer.extend((-1i16).to_be_bytes());
                answer.extend(0i32.to_be_bytes());
                write_frame(&mut stream, &correlation, &answer);
                return (mechanism, token);
            }
            other => panic!("unexpected request {other} before authentication"),
        }
    }
}

#[test]
fn sasl_plain_credentials_reach_the_broker() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let broker = std::thread::spawn(move || fake_sasl_broker(listener));
    let config = config(&[
        ("KAFKA_BOOTSTRAP_SERVERS", &address),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("KAFKA_SASL_MECHANISM", "PLAIN"),
        ("KAFKA_SASL_USERNAME", "orchestrator"),
        ("KAFKA_SASL_PASSWORD", "s3cret"),
    ]);
    let consumer: BaseConsumer = config.consumer_config("sasl-test").create().unwrap();
    // Any request makes the client connect and authenticate first.
    let _ = consumer.fetch_metadata(None, Duration::from_secs(3));
    let (mechanism, token) = broker.join().unwrap();
    assert_eq!(mechanism, "PLAIN");
    assert_eq!(token, b"\0orchestrator\0s3cret");
}
