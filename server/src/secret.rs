//! Secrets and what could leak them: [`Secret`] (never printed) and URL redaction for logs
//! and errors. A leaf: it imports nothing of the crate, so any module may use it.

/// A secret from the environment or a file: shown as `***` by `Debug`, so it cannot reach a
/// log through a printed config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// No secret (a default to be replaced).
    pub const fn empty() -> Secret {
        Secret(String::new())
    }

    /// The secret itself; only for keying.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `url` with the password of its userinfo (and any `password=` query parameter) replaced by
/// `***`, for anything that reaches a log or an error message. The user, host, port and path
/// stay, since those are what an operator needs to see which service was meant.
///
/// Hand-parsed rather than with a URL parser: it must also redact strings no parser accepts
/// (a password with an unescaped `/` or `#`, a missing scheme), so it errs on the side of
/// hiding too much. Userinfo ends at the *last* `@`, so an unescaped `@` or `/` in the
/// password cannot leak its tail.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            host
        }
        None => rest,
    };
    // Query parameters such as Postgres' `?password=` (or a libpq `key=value` string) carry
    // secrets too.
    let mut tail = rest;
    while let Some(i) = find_ignore_case(tail, "password=") {
        let at_param_start = i == 0 || matches!(tail.as_bytes()[i - 1], b'?' | b'&' | b';' | b' ');
        let value_start = i + "password=".len();
        out.push_str(&tail[..value_start]);
        tail = &tail[value_start..];
        if at_param_start {
            let end = tail.find(['&', '#', ';', ' ']).unwrap_or(tail.len());
            out.push_str("***");
            tail = &tail[end..];
        }
    }
    out.push_str(tail);
    out
}

/// `text` (an error message about `url`) with the raw URL and its password, plain or
/// percent-encoded, replaced: a driver's message may echo either.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(password) = url_password(url) {
        if !password.is_empty() {
            out = out.replace(password, "***");
            let decoded = percent_decode(password);
            if !decoded.is_empty() {
                out = out.replace(&decoded, "***");
            }
        }
    }
    out
}

/// The raw (still percent-encoded) userinfo password, as `redact_url` delimits it.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.find("://").map_or(url, |i| &url[i + 3..]);
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo.find(':').map(|c| &userinfo[c + 1..])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("postgres://concord:s3cret@db:5432/concord"),
            "postgres://concord:***@db:5432/concord"
        );
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
    }

    #[test]
    fn user_only_and_no_userinfo_are_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "redis://127.0.0.1:6379",
            "sqlite://data/concord.db",
            "sqlite::memory:",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn percent_encoded_and_unescaped_delimiters_do_not_leak() {
        assert_eq!(
            redact_url("postgres://u:p%40ss%2Fw0rd@h/db"),
            "postgres://u:***@h/db"
        );
        // Invalid as a URL, but exactly what someone pastes: '@' and '/' left unescaped.
        let out = redact_url("postgres://u:p@ss/w#rd@h/db");
        assert_eq!(out, "postgres://u:***@h/db");
        assert!(!out.contains("ss/w"));
    }

    #[test]
    fn query_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://h/db?sslmode=require&password=hunter2&application_name=x"),
            "postgres://h/db?sslmode=require&password=***&application_name=x"
        );
        assert_eq!(
            redact_url("postgres://h/db?PASSWORD=hunter2"),
            "postgres://h/db?PASSWORD=***"
        );
        assert_eq!(
            redact_url("host=h password=hunter2 user=u"),
            "host=h password=*** user=u"
        );
        // Not a parameter of its own: left alone.
        assert_eq!(
            redact_url("postgres://h/db?oldpassword=x"),
            "postgres://h/db?oldpassword=x"
        );
    }

    #[test]
    fn garbage_is_redacted_conservatively() {
        assert_eq!(redact_url(""), "");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("user:hunter2@host"), "user:***@host");
        assert_eq!(redact_url("postgres:/u:hunter2@h"), "postgres:***@h");
        assert_eq!(redact_url("://:@"), "://:***@");
        assert_eq!(redact_url("ünï:cødé@ho"), "ünï:***@ho");
        for garbage in ["@@@", ":::", "a:b@c:d@e", "%zz:%4@x", "password="] {
            let out = redact_url(garbage);
            assert!(!out.contains("b@c"), "{garbage} -> {out}");
        }
    }

    #[test]
    fn scrub_hides_echoed_urls_and_passwords() {
        let url = "postgres://u:p%21ss@h/db";
        let msg = format!("cannot connect to {url}: password p!ss rejected, also p%21ss");
        let out = scrub(&msg, url);
        assert!(!out.contains("p!ss") && !out.contains("p%21ss"), "{out}");
        assert!(out.contains("postgres://u:***@h/db"), "{out}");
    }
}
