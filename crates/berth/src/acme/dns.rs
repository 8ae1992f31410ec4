//! The DNS-01 responder: a tiny authoritative server for exactly one name,
//! `_acme-challenge.<public host>`, which the operator delegates to Berth (NS or CNAME), so
//! the ACME server can read the TXT values of the challenges in flight. It answers nothing
//! else: any other name, class or opcode is REFUSED, garbage and responses are dropped, and
//! an answer is never larger than needed (a UDP answer over the client's limit is truncated
//! to its question), so it cannot be used to amplify traffic. It never resolves anything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// The largest query read and the largest UDP answer sent (the EDNS size DNS Flag Day 2020
/// settled on); a larger datagram is dropped unread.
pub const MAX_MESSAGE: usize = 1232;
/// Seconds resolvers may keep an answer: the values change with every order.
const TTL: u32 = 1;
/// TCP clients at once, and how long one may stay quiet.
const MAX_TCP_CLIENTS: usize = 32;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries answered on one TCP connection before it is closed.
const TCP_QUERIES: usize = 16;
/// The longest one TCP client may hold a slot, however it paces its queries or reads its
/// answers (without it, 16 queries each sent just inside `TCP_IDLE`, or answers never read,
/// held one of the few slots for minutes).
const TCP_CONNECTION: Duration = Duration::from_secs(30);

/// The TXT values served at `_acme-challenge.<host>`: one per authorization in flight (the
/// host and its wildcard validate at the same name, so there are usually two).
pub struct ChallengeRecords {
    name: Name,
    values: Mutex<Vec<String>>,
}

impl ChallengeRecords {
    /// For `host`, a DNS name already checked by the caller.
    pub fn new(host: &str) -> Result<Self, hickory_proto::ProtoError> {
        let name = Name::from_ascii(format!("_acme-challenge.{host}."))?.to_lowercase();
        Ok(ChallengeRecords { name, values: Mutex::new(Vec::new()) })
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    pub fn add(&self, value: &str) {
        let mut values = self.values.lock().expect("challenge records lock");
        if !values.iter().any(|v| v == value) {
            values.push(value.to_owned());
        }
    }

    pub fn remove(&self, value: &str) {
        self.values.lock().expect("challenge records lock").retain(|v| v != value);
    }

    fn current(&self) -> Vec<String> {
        self.values.lock().expect("challenge records lock").clone()
    }

    /// A made-up SOA for the one name, so negative answers can be cached as RFC 2308 says.
    fn soa(&self) -> Record {
        let rname = Name::from_ascii("hostmaster.invalid.").expect("a valid name");
        let soa = SOA::new(self.name.clone(), rname, 1, 3600, 600, 86400, TTL);
        Record::from_rdata(self.name.clone(), TTL, RData::SOA(soa))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The answer to one DNS message, or `None` when nothing should be sent back (not a DNS
/// message, or a response rather than a query). Pure: tested without sockets.
pub fn answer(records: &ChallengeRecords, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    if query.len() > MAX_MESSAGE {
        return None;
    }
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired());
    response.add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_MESSAGE as u16).set_version(0);
        response.set_edns(edns);
    }
    let served = match request.queries() {
        [q] => q.query_class() == DNSClass::IN && q.name().to_lowercase() == records.name,
        _ => false,
    };
    if request.op_code() != OpCode::Query || !served {
        response.set_response_code(ResponseCode::Refused);
    } else {
        response.set_authoritative(true).set_response_code(ResponseCode::NoError);
        match request.queries()[0].query_type() {
            RecordType::TXT => {
                for value in records.current() {
                    let txt = TXT::new(vec![value]);
                    response.add_answer(Record::from_rdata(records.name.clone(), TTL, RData::TXT(txt)));
                }
            }
            RecordType::SOA => {
                response.add_answer(records.soa());
            }
            // No data of that type (ANY included: RFC 8482 allows answering it minimally).
            _ => {
                response.add_name_server(records.soa());
            }
        }
    }
    let bytes = response.to_vec().ok()?;
    let limit = match transport {
        Transport::Udp => usize::from(request.max_payload()).min(MAX_MESSAGE),
        Transport::Tcp => usize::from(u16::MAX),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.truncate().to_vec().ok()
}

/// The UDP socket and TCP listener on one address (the same port for both; port 0 picks
/// one free for both).
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl Sockets {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(Sockets { udp, tcp })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Answers on both sockets until `shutdown`.
pub async fn serve(records: Arc<ChallengeRecords>, sockets: Sockets, shutdown: CancellationToken) {
    let Sockets { udp, tcp } = sockets;
    tokio::join!(serve_udp(Arc::clone(&records), udp, shutdown.clone()), serve_tcp(records, tcp, shutdown));
}

async fn serve_udp(records: Arc<ChallengeRecords>, socket: UdpSocket, shutdown: CancellationToken) {
    // One byte more than accepted, so an oversized datagram is seen as such and dropped.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    // An ICMP error from an earlier answer, most often: nothing to do.
                    tracing::debug!(error = %e, "DNS responder: UDP receive failed");
                    continue;
                }
            },
        };
        if let Some(reply) = answer(&records, &buf[..n], Transport::Udp)
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!(peer = %peer, error = %e, "DNS responder: UDP answer not sent");
        }
    }
}

async fn serve_tcp(records: Arc<ChallengeRecords>, listener: TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = listener.accept() => match got {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS responder: TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap, the newcomer is closed at once rather than queued.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (records, shutdown) = (Arc::clone(&records), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = tokio::time::timeout(TCP_CONNECTION, serve_tcp_client(&records, stream)) => {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "DNS responder: TCP client dropped"),
                        Err(_) => tracing::debug!(peer = %peer, "DNS responder: TCP client over its time; dropped"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the client stops, stays idle, sends one
/// over the size limit or something that gets no answer.
async fn serve_tcp_client(records: &ChallengeRecords, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    for _ in 0..TCP_QUERIES {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_MESSAGE {
            return Ok(());
        }
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(reply) = answer(records, &buf[..len], Transport::Tcp) else { return Ok(()) };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&u16::try_from(reply.len()).unwrap_or(u16::MAX).to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn records() -> ChallengeRecords {
        ChallengeRecords::new("db.example.com").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_tcp_client_pacing_its_queries_just_inside_the_idle_limit_is_closed_at_the_connection_deadline()
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_tcp(Arc::new(records()), listener, CancellationToken::new()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let q = query("_acme-challenge.db.example.com.", RecordType::TXT, None);
        let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let start = tokio::time::Instant::now();
        let mut answered = 0;
        loop {
            if client.write_all(&framed).await.is_err() {
                break;
            }
            let mut len = [0u8; 2];
            if client.read_exact(&mut len).await.is_err() {
                break;
            }
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            client.read_exact(&mut reply).await.unwrap();
            answered += 1;
            assert!(answered < TCP_QUERIES, "served {answered} queries over {:?}", start.elapsed());
            tokio::time::sleep(TCP_IDLE - Duration::from_secs(1)).await;
        }
        // Virtual time (the runtime's clock is paused): closed at the deadline, not after
        // TCP_QUERIES paced queries.
        assert!(start.elapsed() <= TCP_CONNECTION + TCP_IDLE, "held for {:?}", start.elapsed());
        assert!(answered >= 2, "closed before the deadline, after {answered}");
    }

    fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn parse(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).unwrap()
    }

    fn txt_values(m: &Message) -> Vec<String> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::TXT(t) => Some(t.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_value_in_flight_is_served_at_the_one_name_in_any_case() {
        let r = records();
        r.add("first-value");
        r.add("second-value");
        r.add("first-value");
        let m = parse(
            &answer(&r, &query("_ACME-Challenge.DB.example.com.", RecordType::TXT, None), Transport::Udp)
                .unwrap(),
        );
        assert_eq!(m.id(), 4242);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative());
        assert_eq!(txt_values(&m), ["first-value", "second-value"]);
        r.remove("first-value");
        let m = parse(
            &answer(&r, &query("_acme-challenge.db.example.com.", RecordType::TXT, None), Transport::Udp)
                .unwrap(),
        );
        assert_eq!(txt_values(&m), ["second-value"]);
    }

    #[test]
    fn other_names_are_refused_and_other_types_get_no_data() {
        let r = records();
        r.add("value");
        for name in [
            "db.example.com.",
            "example.com.",
            "x._acme-challenge.db.example.com.",
            "_acme-challenge.example.com.",
        ] {
            let m = parse(&answer(&r, &query(name, RecordType::TXT, None), Transport::Udp).unwrap());
            assert_eq!(m.response_code(), ResponseCode::Refused, "{name}");
            assert!(m.answers().is_empty(), "{name}");
        }
        let m = parse(
            &answer(&r, &query("_acme-challenge.db.example.com.", RecordType::A, None), Transport::Udp)
                .unwrap(),
        );
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        assert_eq!(m.name_servers().len(), 1, "the SOA, for negative caching");
    }

    #[test]
    fn garbage_and_responses_get_nothing_back() {
        let r = records();
        assert!(answer(&r, b"", Transport::Udp).is_none());
        assert!(answer(&r, b"\x12\x34 not dns at all, just bytes", Transport::Udp).is_none());
        assert!(answer(&r, &[0xff; MAX_MESSAGE + 1], Transport::Udp).is_none());
        let mut response = parse(&query("_acme-challenge.db.example.com.", RecordType::TXT, None));
        response.set_message_type(MessageType::Response);
        assert!(answer(&r, &response.to_vec().unwrap(), Transport::Udp).is_none(), "a reflected response");
    }

    #[test]
    fn a_udp_answer_over_the_clients_limit_is_truncated_to_its_question() {
        let r = records();
        for i in 0..20 {
            r.add(&format!("{i:02}-{}", "v".repeat(40)));
        }
        let q = query("_acme-challenge.db.example.com.", RecordType::TXT, None);
        let udp = answer(&r, &q, Transport::Udp).unwrap();
        assert!(udp.len() <= 512, "{} bytes", udp.len());
        let m = parse(&udp);
        assert!(m.truncated() && m.answers().is_empty());
        let tcp = parse(&answer(&r, &q, Transport::Tcp).unwrap());
        assert!(!tcp.truncated());
        assert_eq!(txt_values(&tcp).len(), 20);
        // A client announcing a larger EDNS buffer gets it all over UDP, up to MAX_MESSAGE.
        let big = parse(
            &answer(
                &r,
                &query("_acme-challenge.db.example.com.", RecordType::TXT, Some(4096)),
                Transport::Udp,
            )
            .unwrap(),
        );
        assert!(!big.truncated());
        assert_eq!(txt_values(&big).len(), 20);
    }

    #[test]
    fn a_refusal_is_no_larger_than_the_query() {
        let r = records();
        let q = query("example.com.", RecordType::ANY, Some(4096));
        let a = answer(&r, &q, Transport::Udp).unwrap();
        assert!(a.len() <= q.len(), "{} > {}", a.len(), q.len());
    }
}
