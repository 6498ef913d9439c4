//! The sidecar stand-in as workerd uses it, over real TCP: the built binary,
//! a tunnel to a listening port with bytes both ways, 400 for a closed port,
//! many tunnels at once, and the two config routes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

struct Sidecar {
    child: Child,
    addr: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sidecar() -> Sidecar {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_cloudbox-egress"))
        .args([
            "--http-egress-port",
            "15000",
            "--http-ingress-address",
            &addr,
        ])
        .args([
            "--docker-gateway-cidr",
            "172.17.0.0/16",
            "--dns-enabled",
            "--tls-intercept",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("start cloudbox-egress");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "sidecar never listened");
        thread::sleep(Duration::from_millis(20));
    }
    Sidecar { child, addr }
}

/// Sends a CONNECT as workerd does; returns the stream and the status line.
fn connect(sidecar: &Sidecar, port: u16) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(&sidecar.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let dst = format!("127.0.0.1:{port}");
    write!(
        stream,
        "CONNECT {dst} HTTP/1.1\r\nHost: {dst}\r\nX-Dst-Addr: {dst}\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream);
    let status = head.lines().next().unwrap_or_default().to_string();
    (stream, status)
}

fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends `payload` and half-closes while reading everything that comes
/// back, until the other side closes.
fn exchange(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    sender.join().unwrap();
    got
}

fn request(sidecar: &Sidecar, raw: &str) -> String {
    let mut stream = TcpStream::connect(&sidecar.addr).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

/// A server that greets, then echoes everything back reversed per read,
/// until the client half-closes; then it says goodbye.
fn greeting_echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                conn.write_all(b"hello\n").unwrap();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = conn.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    conn.write_all(&buf[..n]).unwrap();
                }
                conn.write_all(b"bye\n").unwrap();
            });
        }
    });
    port
}

#[test]
fn a_tunnel_carries_bytes_both_ways_to_a_listening_port() {
    let sidecar = sidecar();
    let port = greeting_echo_server();
    let (mut stream, status) = connect(&sidecar, port);
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let got = exchange(&mut stream, &payload);
    let mut want = b"hello\n".to_vec();
    want.extend_from_slice(&payload);
    want.extend_from_slice(b"bye\n");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the tunnel changed the bytes");
}

#[test]
fn a_closed_port_answers_400() {
    let sidecar = sidecar();
    let closed = free_port();
    let (_, status) = connect(&sidecar, closed);
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
}

#[test]
fn a_target_off_loopback_answers_400() {
    let sidecar = sidecar();
    let raw = "CONNECT 10.0.0.1:80 HTTP/1.1\r\nX-Dst-Addr: 10.0.0.1:80\r\n\r\n";
    assert!(request(&sidecar, raw).starts_with("HTTP/1.1 400"));
}

#[test]
fn many_tunnels_at_once_each_get_their_own_bytes() {
    let sidecar = sidecar();
    let port = greeting_echo_server();
    let clients: Vec<_> = (0..48u8)
        .map(|i| {
            let (mut stream, status) = connect(&sidecar, port);
            assert_eq!(status, "HTTP/1.1 200 Connection Established");
            thread::spawn(move || {
                let payload = vec![i; 32 * 1024];
                let got = exchange(&mut stream, &payload);
                assert_eq!(&got[..6], b"hello\n");
                assert_eq!(&got[6..got.len() - 4], &payload[..]);
                assert_eq!(&got[got.len() - 4..], b"bye\n");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a tunnel failed");
    }
}

#[test]
fn egress_config_is_accepted_and_the_ca_is_a_pem() {
    let sidecar = sidecar();
    let body = r#"{"enableInternet":true}"#;
    let put = request(
        &sidecar,
        &format!(
            "PUT /egress HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let ca = request(&sidecar, "GET /ca HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ca.starts_with("HTTP/1.1 200"), "{ca}");
    assert!(ca.contains("-----BEGIN CERTIFICATE-----"), "{ca}");
    let other = request(&sidecar, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}
