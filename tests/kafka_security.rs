//! Kafka security as this build supports it: a client is created for every
//! security protocol and SASL mechanism, and SASL credentials really reach
//! the broker. librdkafka's mock cluster speaks no SASL, so the last test
//! uses a listener that answers the SASL handshake as a broker would and
//! records what the client authenticates with.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

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

/// Reads one size-prefixed Kafka frame.
fn read_frame(stream: &mut std::net::TcpStream) -> Vec<u8> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame).unwrap();
    frame
}

/// Writes one size-prefixed response frame.
fn write_frame(stream: &mut std::net::TcpStream, correlation: &[u8], body: &[u8]) {
    stream.write_all(&((correlation.len() + body.len()) as i32).to_be_bytes()).unwrap();
    stream.write_all(correlation).unwrap();
    stream.write_all(body).unwrap();
}

/// A request's api key, version, correlation id and body (after a v1 header).
fn parse_request(frame: &[u8]) -> (i16, i16, Vec<u8>, &[u8]) {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let client_id_len = i16::from_be_bytes([frame[8], frame[9]]).max(0) as usize;
    (key, version, frame[4..8].to_vec(), &frame[10 + client_id_len..])
}

/// What a SASL/PLAIN broker sees: ApiVersions (answered with SaslHandshake
/// v1 and SaslAuthenticate v0), the handshake, then the authenticate request.
/// Returns the mechanism and the PLAIN token.
fn fake_sasl_broker(listener: TcpListener) -> (String, Vec<u8>) {
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut mechanism = String::new();
    loop {
        let frame = read_frame(&mut stream);
        let (key, version, correlation, body) = parse_request(&frame);
        match key {
            18 => {
                // ApiVersions; v3+ answers in the compact (flexible) form.
                let supported: [(i16, i16, i16); 3] = [(18, 0, 3), (17, 0, 1), (36, 0, 0)];
                let mut answer = 0i16.to_be_bytes().to_vec();
                if version >= 3 {
                    answer.push(supported.len() as u8 + 1);
                    for (k, min, max) in supported {
                        answer.extend([k.to_be_bytes(), min.to_be_bytes(), max.to_be_bytes()].concat());
                        answer.push(0);
                    }
                    answer.extend(0i32.to_be_bytes());
                    answer.push(0);
                } else {
                    answer.extend((supported.len() as i32).to_be_bytes());
                    for (k, min, max) in supported {
                        answer.extend([k.to_be_bytes(), min.to_be_bytes(), max.to_be_bytes()].concat());
                    }
                }
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
