//! The public proof page of a run (`GET /runs/:id`), rendered on the server
//! (pure): repo and ref, status and timings, every step with its command,
//! exit code, duration and output (collapsed when long), the artifact, the
//! diff (added and removed lines coloured), and the hash chain checked here,
//! with how to check it yourself. Self-contained: inline styles, no script,
//! no font, no image, nothing fetched (and `CONTENT_SECURITY_POLICY` forbids
//! it). Everything from the run is hostile text and goes through `escape`.

use std::fmt::Write;

use serde_json::Value;

use crate::wire::receipts::{verify_chain, ChainCheck, Receipt};

/// Sent with the page: nothing but its own inline styles may load or run.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Output longer than this (lines or bytes) starts collapsed.
const OPEN_MAX_LINES: usize = 12;
const OPEN_MAX_BYTES: usize = 2_000;

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The receipts of a run body, and their chain checked.
pub fn check(body: &Value) -> (Vec<Receipt>, ChainCheck) {
    let receipts: Vec<Receipt> =
        serde_json::from_value(body["receipts"].clone()).unwrap_or_default();
    let check = verify_chain(&receipts);
    (receipts, check)
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

/// The whole page of a run body (as `GET /api/runs/:id/public` shows it).
pub fn render(body: &Value) -> String {
    let (receipts, chain) = check(body);
    let run_id = escape(text(body, "runId"));
    let status = text(body, "status");
    let ok = body["ok"].as_bool();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Run {run_id} · Cloudbox</title><style>{STYLE}</style></head><body><main>"
    );
    let verdict = match ok {
        Some(true) => ("pass", "every verify step passed"),
        Some(false) => ("fail", "not every verify step passed"),
        None => ("wait", "not finished"),
    };
    let _ = write!(
        page,
        "<header><p class=\"kicker\">Cloudbox run</p><h1>{repo}</h1>\
         <p class=\"meta\">ref <code>{git_ref}</code> · run <code>{run_id}</code></p>\
         <p><span class=\"badge {cls}\">{status}</span> {verdict}</p>\
         <p class=\"meta\">created {created} · finished {finished}{container}</p></header>",
        repo = escape(text(body, "repo")),
        git_ref = escape(body["ref"].as_str().unwrap_or("default branch")),
        cls = verdict.0,
        status = escape(status),
        verdict = verdict.1,
        created = escape(text(body, "createdAt")),
        finished = escape(body["finishedAt"].as_str().unwrap_or("—")),
        container = match body["containerMs"].as_u64() {
            Some(ms) => format!(" · container {:.1} s", ms as f64 / 1000.0),
            None => String::new(),
        },
    );
    chain_section(&mut page, &chain, text(body, "runId"));
    let _ = write!(page, "<section><h2>Steps ({})</h2>", receipts.len());
    for r in &receipts {
        step(&mut page, r);
    }
    page.push_str("</section>");
    artifact_section(&mut page, &body["artifact"]);
    diff_section(&mut page, body["diff"].as_str().unwrap_or(""));
    page.push_str("</main></body></html>\n");
    page
}

fn chain_section(page: &mut String, chain: &ChainCheck, run_id: &str) {
    let (cls, what) = if chain.valid {
        ("pass", "valid: every receipt's hash and link check out")
    } else {
        ("fail", "NOT valid")
    };
    let _ = write!(
        page,
        "<section><h2>Hash chain</h2><p><span class=\"badge {cls}\">{what}</span></p>\
         <p class=\"meta\">{n} receipts · head <code class=\"hash\">{head}</code>{first}</p>\
         <details><summary>Check it yourself</summary>\
         <p>Fetch <code>/api/runs/{id}/public</code>. For each receipt in order, \
         <code>hash</code> is the lowercase hex SHA-256 of the UTF-8 bytes of the compact JSON array \
         <code>[\"cloudbox.receipt.v1\", prevHash, seq, type, cmd, exitCode, signal, stdout, stderr, \
         truncated, timedOut, startedAt, finishedAt, durationMs, ms]</code> (strings escaped as JSON does, \
         <code>null</code> for a missing exit code or signal); <code>seq</code> counts from 1 and each \
         <code>prevHash</code> is the previous receipt's <code>hash</code> (64 zeros for the first). \
         The last <code>hash</code> is the head above.</p></details></section>",
        n = chain.length,
        head = escape(chain.head.as_deref().unwrap_or("none")),
        first = match chain.first_invalid_seq {
            Some(seq) => format!(" · first wrong receipt #{seq}"),
            None => String::new(),
        },
        id = escape(run_id),
    );
}

fn step(page: &mut String, r: &Receipt) {
    let (cls, exit) = match (r.exit_code, &r.signal) {
        (Some(0), _) => ("pass", "exit 0".to_string()),
        (Some(code), _) => ("fail", format!("exit {code}")),
        (None, Some(signal)) => ("fail", format!("signal {}", escape(signal))),
        (None, None) => ("wait", "no exit".to_string()),
    };
    let _ = write!(
        page,
        "<article class=\"step\"><p><span class=\"seq\">#{seq}</span> \
         <span class=\"kind\">{kind}</span> <span class=\"badge {cls}\">{exit}</span> \
         <span class=\"meta\">{secs:.1} s{timed_out}</span></p><pre class=\"cmd\">{cmd}</pre>",
        seq = r.seq,
        kind = escape(r.kind.as_str()),
        secs = r.duration_ms as f64 / 1000.0,
        timed_out = if r.timed_out { " · timed out" } else { "" },
        cmd = escape(&r.cmd),
    );
    for (name, output) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if output.is_empty() {
            continue;
        }
        let long = output.len() > OPEN_MAX_BYTES || output.lines().count() > OPEN_MAX_LINES;
        let _ = write!(
            page,
            "<details{open}><summary>{name} ({lines} lines{cut})</summary><pre>{text}</pre></details>",
            open = if long { "" } else { " open" },
            lines = output.lines().count(),
            cut = if r.truncated { ", the start cut" } else { "" },
            text = escape(output),
        );
    }
    page.push_str("</article>");
}

fn artifact_section(page: &mut String, artifact: &Value) {
    if artifact.is_null() {
        return;
    }
    let path = escape(text(artifact, "path"));
    let body = if artifact["found"].as_bool() == Some(true) {
        format!(
            "<p class=\"meta\">{bytes} bytes · sha256 <code class=\"hash\">{sha}</code>{cut}</p><pre>{content}</pre>",
            bytes = artifact["bytes"].as_u64().unwrap_or(0),
            sha = escape(text(artifact, "sha256")),
            cut = if artifact["truncated"].as_bool() == Some(true) { " · shown in part" } else { "" },
            content = escape(text(artifact, "content")),
        )
    } else {
        format!(
            "<p>not found: {}</p>",
            escape(artifact["error"].as_str().unwrap_or("missing"))
        )
    };
    let _ = write!(
        page,
        "<section><h2>Artifact <code>{path}</code></h2>{body}</section>"
    );
}

fn diff_section(page: &mut String, diff: &str) {
    page.push_str("<section><h2>Diff</h2>");
    if diff.trim().is_empty() {
        page.push_str("<p class=\"meta\">no change</p></section>");
        return;
    }
    page.push_str("<pre class=\"diff\">");
    for line in diff.lines() {
        let cls = diff_line_class(line);
        let _ = writeln!(page, "<span class=\"{cls}\">{}</span>", escape(line));
    }
    page.push_str("</pre></section>");
}

/// How a diff line is coloured.
pub fn diff_line_class(line: &str) -> &'static str {
    if line.starts_with("+++") || line.starts_with("---") || line.starts_with("diff ") {
        "file"
    } else if line.starts_with("@@") {
        "hunk"
    } else if line.starts_with('+') {
        "add"
    } else if line.starts_with('-') {
        "del"
    } else {
        "ctx"
    }
}

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--muted:#5b6570;--line:#d8dee4;--pass:#1a7f37;--fail:#cf222e;--wait:#9a6700}\
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;--line:#30363d}}\
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif}\
main{max-width:960px;margin:0 auto;padding:16px}h1{font-size:1.4em;margin:.2em 0;overflow-wrap:anywhere}h2{font-size:1.1em;margin:1.4em 0 .5em}\
.kicker,.meta{color:var(--muted);font-size:.9em;margin:.2em 0}code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em;overflow-wrap:anywhere}\
.hash{word-break:break-all}pre{background:rgba(127,127,127,.08);border:1px solid var(--line);border-radius:6px;padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-word;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;margin:.4em 0}\
.badge{display:inline-block;padding:0 8px;border-radius:999px;color:#fff;font-size:.85em;font-weight:600}.pass{background:var(--pass)}.fail{background:var(--fail)}.wait{background:var(--wait)}\
.step{border-top:1px solid var(--line);padding:6px 0}.seq{color:var(--muted)}.kind{font-weight:600}.cmd{margin-top:0}summary{cursor:pointer;color:var(--muted)}\
.diff .add{color:var(--pass)}.diff .del{color:var(--fail)}.diff .hunk{color:var(--wait)}.diff .file{font-weight:600}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::receipts::{Chain, ReceiptKind, Step};
    use serde_json::json;

    fn receipts(stdout: &str) -> Vec<Receipt> {
        let mut chain = Chain::default();
        let mut out = Vec::new();
        for (kind, cmd) in [
            (ReceiptKind::Clone, "git clone"),
            (ReceiptKind::Command, "echo '<b>'"),
        ] {
            out.push(chain.append(Step {
                kind,
                cmd: cmd.into(),
                exit_code: Some(0),
                signal: None,
                stdout: stdout.into(),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
                started_ms: 1_796_000_000_000,
                duration_ms: 1000,
            }));
        }
        out
    }

    fn body(stdout: &str) -> Value {
        json!({
            "runId": "run_1", "ok": true, "status": "passed", "repo": "https://github.com/o/r",
            "ref": null, "createdAt": "2026-12-01T00:00:00Z", "finishedAt": "2026-12-01T00:00:02Z",
            "containerMs": 1500, "receipts": receipts(stdout),
            "artifact": {"path": "out.txt", "found": true, "content": "<i>art</i>", "bytes": 10, "sha256": "ab", "truncated": false},
            "diff": "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+<new>\n",
        })
    }

    #[test]
    fn hostile_text_is_escaped_everywhere() {
        let hostile =
            "<script>alert(1)</script>\" onmouseover=\"alert(2)' <img src=x onerror=alert(3)>";
        let mut b = body(hostile);
        b["repo"] = json!(hostile);
        b["runId"] = json!(hostile);
        let page = render(&b);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("\" onmouseover"), "{page}");
        assert!(page.contains(
            "&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;alert(2)&#39;"
        ));
        assert!(page.contains("&lt;i&gt;art&lt;/i&gt;"));
        assert!(page.contains("echo &#39;&lt;b&gt;&#39;"));
    }

    #[test]
    fn the_page_checks_the_chain_and_shows_every_step() {
        let b = body("hello\n");
        let page = render(&b);
        let (receipts, chain) = check(&b);
        assert!(chain.valid);
        assert!(page.contains("valid: every receipt"));
        assert!(page.contains(chain.head.as_deref().unwrap()));
        assert_eq!(
            page.matches("<article class=\"step\">").count(),
            receipts.len()
        );
        assert!(page.contains("<span class=\"del\">-old</span>"));
        assert!(page.contains("<span class=\"add\">+&lt;new&gt;</span>"));
        assert!(page.contains("name=\"viewport\""));
        // Nothing to fetch: no script, no link, no external URL.
        for banned in ["<script", "<link", "src=", "http://", "@import"] {
            assert!(!page.contains(banned), "{banned}");
        }
        // A tampered receipt is caught.
        let mut bad = b.clone();
        bad["receipts"][1]["stdout"] = json!("changed");
        let page = render(&bad);
        assert!(page.contains("NOT valid") && page.contains("first wrong receipt #2"));
    }

    #[test]
    fn long_output_starts_collapsed() {
        let short = render(&body("one line\n"));
        assert!(short.contains("<details open><summary>stdout"));
        let long = render(&body(&"line\n".repeat(50)));
        assert!(long.contains("<details><summary>stdout (50 lines)"));
    }

    #[test]
    fn diff_lines_are_classed() {
        assert_eq!(diff_line_class("+added"), "add");
        assert_eq!(diff_line_class("-gone"), "del");
        assert_eq!(diff_line_class("+++ b/x"), "file");
        assert_eq!(diff_line_class("@@ -1 +1 @@"), "hunk");
        assert_eq!(diff_line_class(" same"), "ctx");
        assert_eq!(escape("a&b"), "a&amp;b");
    }
}
