//! The tests' GitHub: a git smart-HTTP server over a directory of bare
//! repos (`<root>/<owner>/<name>.git`), as `git http-backend` (git's own CGI
//! program) behind a small HTTP/1.1 front on the host's bridge address, so
//! the runner in a container can clone from it. The runner is told to fetch
//! `https://github.com/` from here (`RUNNER_GITHUB_MIRROR`); the API still
//! accepts only GitHub URLs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The largest request body read (a clone's negotiation is a few KiB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub struct GitHttp {
    /// e.g. `http://172.17.0.1:40123/` (ends with `/`).
    pub base_url: String,
}

/// Serves `root` on `ip` (a free port) until the test process exits.
pub fn start(root: &Path, ip: &str) -> GitHttp {
    let listener = TcpListener::bind((ip, 0)).expect("bind the git server");
    let port = listener.local_addr().expect("git server address").port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                if let Err(err) = serve(conn, &root) {
                    eprintln!("git server: {err}");
                }
            });
        }
    });
    GitHttp {
        base_url: format!("http://{ip}:{port}/"),
    }
}

struct Head {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn serve(conn: TcpStream, root: &PathBuf) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let body = read_body(&mut reader, &head)?;
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", &head.path)
        .env("QUERY_STRING", &head.query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = head.header(header) {
            cmd.env(var, value);
        }
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut out)?;
    let _ = feeder.join();
    let _ = child.wait();
    respond(conn, &out)
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
    }))
}

/// The body, by `content-length` or `transfer-encoding: chunked`.
fn read_body(reader: &mut impl BufRead, head: &Head) -> std::io::Result<Vec<u8>> {
    let too_big = || std::io::Error::other("request body too large");
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if body.len() + size > MAX_BODY_BYTES {
                return Err(too_big());
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                return Ok(body);
            }
        }
    }
    let length: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(too_big());
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// Turns the CGI answer (headers, a blank line, the body) into HTTP/1.1.
fn respond(mut conn: TcpStream, cgi: &[u8]) -> std::io::Result<()> {
    let split = cgi
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| cgi.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let (head, body) = match split {
        Some((at, len)) => (
            String::from_utf8_lossy(&cgi[..at]).into_owned(),
            &cgi[at + len..],
        ),
        None => (String::new(), cgi),
    };
    let mut status = "200 OK".to_string();
    let mut headers = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some((k, v)) => headers.push_str(&format!("{}: {}\r\n", k.trim(), v.trim())),
            None => {}
        }
    }
    write!(
        conn,
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    conn.flush()
}
