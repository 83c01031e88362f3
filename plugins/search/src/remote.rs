//! The remote variant: instead of ranking a local corpus, forward each query to one HTTP search
//! endpoint (e.g. a self-hosted search engine) that the run configuration grants the plugin.
//! Plain HTTP/1.1 over `std::net` (WASI sockets inside the sandbox): there is no TLS in the
//! guest, so the endpoint is meant to be a service on the same host or network, such as a
//! loopback proxy. The host's network grant decides which `host:port` the plugin may reach;
//! anything else fails to connect.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::tool::{ArgumentError, SearchConfig, Spec, parse_arguments, spec};

/// Largest response body passed on to the model.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why `endpoint` is not a usable `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("config endpoint is not set")]
    NotSet,
    #[error("config endpoint {url:?} must start with http:// (the plugin has no TLS; put a local proxy in front of https services)")]
    NotHttp { url: String },
    #[error("config endpoint {url:?} has an invalid port {port:?}")]
    BadPort { url: String, port: String },
    #[error("config endpoint {url:?} has no host")]
    NoHost { url: String },
}

/// Why a query to the endpoint failed; `endpoint` is its `http://host:port/path`.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Includes a network grant that does not cover the endpoint.
    #[error("cannot connect to the search endpoint {endpoint}: {source} (is it running, and granted to the plugin as `network:`?)")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sending the query to {endpoint}: {source}")]
    Send {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the answer of {endpoint}: {source}")]
    Receive {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("search endpoint {endpoint}: {source}")]
    Response {
        endpoint: String,
        #[source]
        source: ResponseError,
    },
}

/// What is wrong with the endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the answer is not an HTTP response")]
    NotHttp,
    #[error("the answer is not an HTTP/1.x response: {status_line:?}")]
    NotHttp1 { status_line: String },
    #[error("bad HTTP status line {status_line:?}")]
    BadStatusLine { status_line: String },
    #[error("truncated chunked body")]
    TruncatedChunks,
    #[error("bad chunk size {size:?}")]
    BadChunkSize { size: String },
    #[error("the answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// A status outside 2xx, with the start of the body.
    #[error("answered {status_line:?}: {reason}")]
    Status { status_line: String, reason: String },
}

/// Why a remote tool call failed: its arguments (checked before any network use) or the query.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Arguments(#[from] ArgumentError),
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// The search tool backed by a remote endpoint: same spec and argument checks as the local tool.
pub struct RemoteTool {
    endpoint: Endpoint,
    config: SearchConfig,
}

impl RemoteTool {
    /// A remote tool for `config.endpoint`; an error when it is unset or malformed.
    pub fn new(config: SearchConfig) -> Result<RemoteTool, EndpointError> {
        let url = config.endpoint.as_deref().ok_or(EndpointError::NotSet)?;
        Ok(RemoteTool { endpoint: Endpoint::parse(url)?, config })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn spec(&self) -> Spec {
        spec(&self.config)
    }

    pub fn invoke(&self, arguments: &str) -> Result<String, RemoteError> {
        let request = parse_arguments(arguments, &self.config)?;
        Ok(self.endpoint.search(&request.query, request.k)?)
    }
}

/// A parsed `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Path (and any fixed query string) of the search resource, starting with `/`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path[?query]]`; the port defaults to 80.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let rest = url.trim().strip_prefix("http://").ok_or_else(|| EndpointError::NotHttp { url: url.to_owned() })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| EndpointError::BadPort { url: url.to_owned(), port: p.to_owned() })?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(EndpointError::NoHost { url: url.to_owned() });
        }
        Ok(Endpoint { host: host.to_owned(), port, path: path.to_owned() })
    }

    /// Sends `GET <path>?q=<query>&k=<k>` and returns the response body (expected to be the same
    /// result JSON as the local tool, but passed on as text whatever it is). Errors name the
    /// endpoint and say what failed: connect (including a denied network grant), I/O, HTTP status.
    pub fn search(&self, query: &str, k: usize) -> Result<String, SearchError> {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let target = format!("{}{sep}q={}&k={k}", self.path, percent_encode(query));
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: sigmaforge-search\r\n\r\n",
            self.host, self.port
        );
        let endpoint = format!("http://{}:{}{}", self.host, self.port, self.path);
        let mut stream = match TcpStream::connect((self.host.as_str(), self.port)) {
            Ok(s) => s,
            Err(source) => return Err(SearchError::Connect { endpoint, source }),
        };
        if let Err(source) = stream.write_all(request.as_bytes()) {
            return Err(SearchError::Send { endpoint, source });
        }
        let mut raw = Vec::new();
        if let Err(source) = stream.take((MAX_RESPONSE_BYTES + 16 * 1024) as u64).read_to_end(&mut raw) {
            return Err(SearchError::Receive { endpoint, source });
        }
        parse_response(&raw).map_err(|source| SearchError::Response { endpoint, source })
    }
}

/// The body of an HTTP/1.1 response, decoding `Transfer-Encoding: chunked`; non-2xx is an error.
fn parse_response(raw: &[u8]) -> Result<String, ResponseError> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(ResponseError::NotHttp)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, status) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(ResponseError::NotHttp1 { status_line: status_line.to_owned() });
    }
    let code: u16 = status.parse().map_err(|_| ResponseError::BadStatusLine { status_line: status_line.to_owned() })?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(ResponseError::TooLarge);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if !(200..300).contains(&code) {
        let reason: String = text.chars().take(200).collect();
        return Err(ResponseError::Status { status_line: status_line.to_owned(), reason });
    }
    Ok(text)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let mut out = Vec::new();
    loop {
        let nl = data.windows(2).position(|w| w == b"\r\n").ok_or(ResponseError::TruncatedChunks)?;
        let size_text = String::from_utf8_lossy(&data[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ResponseError::BadChunkSize { size: size_text.to_string() })?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err(ResponseError::TruncatedChunks);
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Percent-encoding of a query-string value (RFC 3986 unreserved characters pass through).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoints_parse_and_bad_ones_are_named() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080/search").unwrap(),
            Endpoint { host: "127.0.0.1".into(), port: 8080, path: "/search".into() }
        );
        assert_eq!(Endpoint::parse("http://search.local").unwrap().port, 80);
        assert!(Endpoint::parse("https://x").unwrap_err().to_string().contains("http://"));
        assert!(Endpoint::parse("http://x:port/").unwrap_err().to_string().contains("invalid port"));
        assert!(Endpoint::parse("http://:80/").unwrap_err().to_string().contains("no host"));
    }

    #[test]
    fn responses_are_decoded() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx").unwrap(), "{}");
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), "abcde");
        let err = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy").unwrap_err().to_string();
        assert!(err.contains("503") && err.contains("busy"), "{err}");
        assert!(parse_response(b"garbage").is_err());
        assert_eq!(percent_encode("EventID 4688&x=ü"), "EventID%204688%26x%3D%C3%BC");
    }

    #[test]
    fn queries_reach_a_loopback_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = r#"{"results": []}"#;
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            request
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}/api/search")).unwrap();
        assert_eq!(endpoint.search("lsass dump", 3).unwrap(), r#"{"results": []}"#);
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /api/search?q=lsass%20dump&k=3 HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn remote_tool_checks_arguments_before_any_network_use() {
        let config = SearchConfig { endpoint: Some("http://127.0.0.1:9/s".into()), ..SearchConfig::default() };
        let tool = RemoteTool::new(config).unwrap();
        assert_eq!(tool.invoke("{}").unwrap_err().to_string(), "missing required argument \"query\" (a string)");
        assert_eq!(tool.spec().name, "search");
        assert_eq!(RemoteTool::new(SearchConfig::default()).err(), Some(EndpointError::NotSet));
    }

    #[test]
    fn unreachable_endpoint_is_a_clear_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = Endpoint::parse(&format!("http://127.0.0.1:{port}/s")).unwrap().search("x", 1).unwrap_err();
        assert!(matches!(err, SearchError::Connect { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("cannot connect to the search endpoint") && err.contains(&port.to_string()), "{err}");
    }
}
