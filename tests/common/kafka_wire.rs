//! Just enough of the Kafka wire protocol for test brokers that answer what
//! librdkafka's mock cluster does not implement (SASL, CreateTopics).

use std::io::{Read, Write};
use std::net::TcpStream;

/// Reads one size-prefixed frame; `None` when the client hung up.
pub fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// Writes one size-prefixed response frame: the correlation id, then `body`.
pub fn write_frame(stream: &mut TcpStream, correlation: &[u8], body: &[u8]) {
    stream.write_all(&((correlation.len() + body.len()) as i32).to_be_bytes()).unwrap();
    stream.write_all(correlation).unwrap();
    stream.write_all(body).unwrap();
}

/// A request: api key, version, correlation id and body (after a v1 header).
pub struct Request<'a> {
    pub key: i16,
    pub version: i16,
    pub correlation: Vec<u8>,
    pub body: &'a [u8],
}

/// Splits a v1-header request frame.
pub fn parse_request(frame: &[u8]) -> Request<'_> {
    let client_id_len = i16::from_be_bytes([frame[8], frame[9]]).max(0) as usize;
    Request {
        key: i16::from_be_bytes([frame[0], frame[1]]),
        version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation: frame[4..8].to_vec(),
        body: &frame[10 + client_id_len..],
    }
}

/// The ApiVersions answer advertising `supported` (api key, min, max), in
/// the compact form for v3+ requests.
pub fn api_versions_answer(version: i16, supported: &[(i16, i16, i16)]) -> Vec<u8> {
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
    answer
}

/// Reads big-endian fields off a request body.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    pub fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    pub fn string(&mut self) -> String {
        let len = self.i16();
        if len < 0 {
            return String::new();
        }
        String::from_utf8(self.take(len as usize).to_vec()).unwrap()
    }
}

/// Appends a Kafka (non-compact) string.
pub fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as i16).to_be_bytes());
    out.extend(text.as_bytes());
}
