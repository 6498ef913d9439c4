//! cloudbox-egress: a local stand-in for the networking sidecar that workerd
//! starts next to every Container under `wrangler dev` (Cloudflare's
//! `proxy-everything` image, which is pulled from Docker Hub and so cannot be
//! had here). The app container joins this sidecar's network namespace, so
//! "127.0.0.1" here is the app container's loopback.
//!
//! It does only what workerd asks of it (workerd's `container-client.c++`):
//! - `CONNECT 127.0.0.1:<port>` (the port also in `X-Dst-Addr`) on the ingress
//!   address: 200 and a byte tunnel to that port, or 400 when nothing listens
//!   there. This is how `getTcpPort(p).fetch()` reaches the container.
//! - `PUT /egress` (its outbound config): 200. The stand-in intercepts no
//!   outbound traffic: containers reach the Docker bridge directly.
//! - `GET /ca`: a PEM certificate (one whose private key was thrown away, so
//!   nothing can be signed with it; the stand-in intercepts no TLS).
//!
//! Flags (workerd's): `--http-ingress-address ADDR` (default 0.0.0.0:39001);
//! `--http-egress-port`, `--docker-gateway-cidr`, `--dns-enabled`,
//! `--tls-intercept` and `--disable-ipv6` are accepted and ignored.
//! Local development and tests only; never deployed.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// The largest request head read before the request is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest `PUT /egress` body read.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a tunnel's target may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CA_PEM: &str = include_str!("ca.pem");

fn main() {
    let ingress = ingress_address(std::env::args().skip(1));
    let listener = match TcpListener::bind(&ingress) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cloudbox-egress: cannot listen on {ingress}: {err}");
            std::process::exit(1);
        }
    };
    eprintln!("cloudbox-egress: listening on {ingress}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(err) = serve(stream) {
                        eprintln!("cloudbox-egress: {err}");
                    }
                });
            }
            Err(err) => eprintln!("cloudbox-egress: accept: {err}"),
        }
    }
}

/// The value of `--http-ingress-address` (also `--flag=value`), else the default.
fn ingress_address(args: impl Iterator<Item = String>) -> String {
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--http-ingress-address=") {
            return value.to_string();
        }
        if arg == "--http-ingress-address" {
            if let Some(value) = args.next() {
                return value;
            }
        }
    }
    "0.0.0.0:39001".to_string()
}

/// A parsed request head and the bytes read past it.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn serve(mut client: TcpStream) -> io::Result<()> {
    let Some(head) = read_head(&mut client)? else {
        return respond(&mut client, 400, "text/plain", "bad request head\n");
    };
    match (head.method.as_str(), head.target.as_str()) {
        ("CONNECT", _) => {
            let dst = head
                .header("x-dst-addr")
                .unwrap_or(&head.target)
                .to_string();
            tunnel(client, &dst, &head.rest)
        }
        ("PUT", "/egress") => {
            let length: usize = head
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if length > MAX_BODY_BYTES {
                return respond(&mut client, 413, "text/plain", "config too large\n");
            }
            let mut body = head.rest.clone();
            if body.len() < length {
                let mut more = vec![0; length - body.len()];
                client.read_exact(&mut more)?;
                body.extend_from_slice(&more);
            }
            respond(&mut client, 200, "application/json", "{}")
        }
        ("GET", "/ca") => respond(&mut client, 200, "application/x-pem-file", CA_PEM),
        _ => respond(&mut client, 404, "text/plain", "not found\n"),
    }
}

/// Reads up to the end of the request head; `None` when it is malformed,
/// too long or the peer closed first.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return Ok(None);
    };
    let mut lines = text.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (request.next(), request.next()) else {
        return Ok(None);
    };
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        rest: buf[end + 4..].to_vec(),
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The app container's own ports only: a tunnel never leaves loopback.
fn loopback_target(dst: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = dst.parse().ok()?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(addr),
        IpAddr::V6(ip) if ip.is_loopback() => Some(addr),
        _ => None,
    }
}

fn tunnel(mut client: TcpStream, dst: &str, early: &[u8]) -> io::Result<()> {
    let Some(addr) = loopback_target(dst) else {
        return respond(&mut client, 400, "text/plain", "only loopback targets\n");
    };
    let upstream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        // workerd reads 400 as "nothing listens there yet" and retries.
        Err(_) => return respond(&mut client, 400, "text/plain", "nothing listens there\n"),
    };
    client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
    let mut up_write = upstream.try_clone()?;
    up_write.write_all(early)?;
    let mut client_read = client.try_clone()?;
    let forward = thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut up_write);
        let _ = up_write.shutdown(Shutdown::Write);
    });
    let mut up_read = upstream;
    let _ = io::copy(&mut up_read, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = forward.join();
    Ok(())
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_ingress_address_comes_from_its_flag() {
        let flags = [
            "--http-egress-port",
            "1234",
            "--http-ingress-address",
            "0.0.0.0:4000",
            "--dns-enabled",
        ];
        assert_eq!(ingress_address(args(&flags)), "0.0.0.0:4000");
        assert_eq!(
            ingress_address(args(&["--http-ingress-address=1.2.3.4:5"])),
            "1.2.3.4:5"
        );
        assert_eq!(ingress_address(args(&["--tls-intercept"])), "0.0.0.0:39001");
    }

    #[test]
    fn tunnels_reach_loopback_only() {
        assert!(loopback_target("127.0.0.1:8080").is_some());
        assert!(loopback_target("[::1]:8080").is_some());
        assert!(loopback_target("172.17.0.1:8080").is_none());
        assert!(loopback_target("example.com:80").is_none());
        assert!(loopback_target("127.0.0.1").is_none());
    }
}
