//! The request target of an absolute URL, split without parsing it again:
//! workerd hands the Worker `request.url` already parsed and normalized
//! (WHATWG), so the path and query are plain substrings of it. This keeps
//! the `url` crate (and its IDNA tables, most of its weight in the bundle)
//! out of the Worker.

/// The path (still percent-encoded, as routes match it) and the raw query
/// (without `?`) of `url`. The fragment, never sent by clients, is dropped.
pub fn split(url: &str) -> (&str, &str) {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority_and_path, query) = after_scheme.split_once('?').unwrap_or((after_scheme, ""));
    let path = authority_and_path
        .find('/')
        .map_or("/", |slash| &authority_and_path[slash..]);
    (path, query)
}

/// The query's name/value pairs, percent- and `+`-decoded
/// (`application/x-www-form-urlencoded`, as browsers and clients send them).
pub fn pairs(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// The first value of `name` in the query, decoded.
pub fn value(query: &str, name: &str) -> Option<String> {
    pairs(query)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_path_and_query() {
        assert_eq!(split("http://127.0.0.1:8787/health"), ("/health", ""));
        assert_eq!(
            split("https://x.example/api/c/cb_1/read?path=a%20b.md&x=1"),
            ("/api/c/cb_1/read", "path=a%20b.md&x=1")
        );
        assert_eq!(split("https://x.example"), ("/", ""));
        assert_eq!(split("https://x.example?a=1"), ("/", "a=1"));
        assert_eq!(split("https://x.example/a?b=1#frag"), ("/a", "b=1"));
        assert_eq!(split("https://x.example/a#f?not=query"), ("/a", ""));
        // A `?` inside the query stays in the query.
        assert_eq!(split("http://h/p?a=1?2"), ("/p", "a=1?2"));
    }

    #[test]
    fn decodes_values_like_a_form() {
        assert_eq!(
            value("path=a%20b.md&x=1", "path").as_deref(),
            Some("a b.md")
        );
        assert_eq!(value("q=a+b", "q").as_deref(), Some("a b"));
        assert_eq!(value("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(value("a=1", "b"), None);
        assert_eq!(value("", "a"), None);
        assert_eq!(value("flag", "flag").as_deref(), Some(""));
    }

    #[test]
    fn agrees_with_the_url_crate_on_what_workerd_sends() {
        for raw in [
            "http://127.0.0.1:8787/workspaces/ws_1/files/a%2Fb?x=%41",
            "https://cloudbox.example/api/runs?cursor=abc&limit=5",
            "http://[::1]:8787/health",
            "http://h/",
        ] {
            let parsed = url::Url::parse(raw).unwrap();
            let (path, query) = split(raw);
            assert_eq!(path, parsed.path(), "{raw}");
            assert_eq!(query, parsed.query().unwrap_or(""), "{raw}");
        }
    }
}
