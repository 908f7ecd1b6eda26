//! A small blocking HTTP/1.1 client over a Unix socket: one request per
//! connection (`Connection: close`), bodies framed by Content-Length,
//! chunked transfer coding, or the end of the stream.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The most a status line plus headers may take; a daemon that sends more is
/// not the one we talk to.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
pub enum Error {
    /// The socket could not be reached.
    Connect {
        socket: PathBuf,
        err: io::Error,
    },
    Io(io::Error),
    /// The answer is not HTTP as we know it, or not the JSON we expect.
    Protocol(String),
    /// The daemon answered 4xx/5xx.
    Api {
        status: u16,
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { socket, err } => write!(
                f,
                "cannot connect to {}: {} (is vmd running?)",
                socket.display(),
                crate::os_error(err)
            ),
            Error::Io(e) => write!(f, "talking to vmd: {}", crate::os_error(e)),
            Error::Protocol(m) => write!(f, "bad answer from vmd: {m}"),
            Error::Api { message, .. } => f.write_str(message),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Protocol("connection closed early".into())
        } else {
            Error::Io(e)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The answer as `T`, or the daemon's error for a 4xx/5xx.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if self.status >= 400 {
            return Err(Error::Api {
                status: self.status,
                message: self.error_message(),
            });
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Protocol(format!(
                "{} {}: {e}: {}",
                self.status,
                self.reason,
                String::from_utf8_lossy(&self.body).trim()
            ))
        })
    }

    /// What to tell the user about an error answer: the `error` of its
    /// JSON body, or else the status and whatever text came with it.
    pub fn error_message(&self) -> String {
        if let Ok(e) = serde_json::from_slice::<api::v1::Error>(&self.body) {
            return e.error;
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            format!("{} {}", self.status, self.reason)
        } else {
            format!("{} {}: {text}", self.status, self.reason)
        }
    }
}

pub struct Client {
    socket: PathBuf,
    verbose: bool,
}

impl Client {
    pub fn new(socket: &Path, verbose: bool) -> Self {
        Client {
            socket: socket.to_owned(),
            verbose,
        }
    }

    /// Sends one request and reads the whole answer, however long the
    /// daemon takes (`wait`, `stop -w`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let stream = UnixStream::connect(&self.socket).map_err(|err| Error::Connect {
            socket: self.socket.clone(),
            err,
        })?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nUser-Agent: vmctl/{}\r\nConnection: close\r\n", env!("CARGO_PKG_VERSION"));
        if let Some(b) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        } else if method != "GET" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        (&stream).write_all(&bytes)?;
        let resp = read_response(BufReader::new(&stream))?;
        if self.verbose {
            eprintln!("vmctl: {method} {path}: {} {}", resp.status, resp.reason);
        }
        Ok(resp)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.request("GET", path, None)?.json()
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.request("POST", path, body.as_deref())?.json()
    }

    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, Error> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.request("PUT", path, Some(&body))?.json()
    }
}

/// `/v1/vms/{id}` and below, with the id percent-encoded where needed.
pub fn vm_path(id: &str, rest: &str) -> String {
    let mut p = String::from("/v1/vms/");
    push_encoded(&mut p, id);
    p.push_str(rest);
    p
}

/// `/v1/vms/{id}/guestinfo`, or `.../guestinfo/{key}` with the key
/// percent-encoded too (a `/` in it reaches vmd as `%2F`, to be refused
/// there as a bad key rather than taken for another path).
pub fn guestinfo_path(id: &str, key: Option<&str>) -> String {
    let mut p = vm_path(id, "/guestinfo");
    if let Some(k) = key {
        p.push('/');
        push_encoded(&mut p, k);
    }
    p
}

/// One path segment: unreserved bytes as they are, the rest as `%XX`.
fn push_encoded(p: &mut String, segment: &str) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            p.push(b as char);
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Reads one HTTP/1.x response. Interim 1xx answers are skipped.
pub fn read_response<R: BufRead>(mut r: R) -> Result<Response, Error> {
    loop {
        let (status, reason, headers) = read_head(&mut r)?;
        if (100..200).contains(&status) {
            continue;
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v): &(String, String)| v.as_str())
        };
        let chunked = get("transfer-encoding")
            .map(|v| {
                v.split(',')
                    .any(|c| c.trim().eq_ignore_ascii_case("chunked"))
            })
            .unwrap_or(false);
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(&mut r)?
        } else if let Some(len) = get("content-length") {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| Error::Protocol(format!("bad Content-Length {len:?}")))?;
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        };
        return Ok(Response {
            status,
            reason,
            headers,
            body,
        });
    }
}

type Head = (u16, String, Vec<(String, String)>);

fn read_head<R: BufRead>(r: &mut R) -> Result<Head, Error> {
    let mut total = 0;
    let mut line = |r: &mut R| -> Result<String, Error> {
        let mut buf = Vec::new();
        let n = r
            .take((MAX_HEAD - total) as u64)
            .read_until(b'\n', &mut buf)?;
        total += n;
        if n == 0 {
            return Err(Error::Protocol("connection closed before an answer".into()));
        }
        if buf.last() != Some(&b'\n') {
            return Err(Error::Protocol("answer header too long or cut off".into()));
        }
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|_| Error::Protocol("header is not UTF-8".into()))
    };
    let status_line = line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(Error::Protocol(format!("bad status line {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| Error::Protocol(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let l = line(r)?;
        if l.is_empty() {
            break;
        }
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| Error::Protocol(format!("bad header line {l:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok((status, reason, headers))
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    let read_line = |r: &mut R| -> Result<String, Error> {
        let mut buf = Vec::new();
        r.take(4096).read_until(b'\n', &mut buf)?;
        if buf.last() != Some(&b'\n') {
            return Err(Error::Protocol("bad chunk framing".into()));
        }
        Ok(String::from_utf8_lossy(&buf).trim().to_string())
    };
    loop {
        let size_line = read_line(r)?;
        let hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| Error::Protocol(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        if !read_line(r)?.is_empty() {
            return Err(Error::Protocol("bad chunk framing".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Response, Error> {
        read_response(s.as_bytes())
    }

    #[test]
    fn content_length() {
        let r = parse("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": true}trailing junk").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.body, b"{\"a\": true}");
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["a"], true);
    }

    #[test]
    fn chunked() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\na;ext=1\r\n2, 3, 4, 5\r\n1\r\n]\r\n0\r\nX-Trailer: y\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"[1, 2, 3, 4, 5]");
        assert_eq!(r.json::<Vec<u32>>().unwrap(), vec![1, 2, 3, 4, 5]);
        // Upper-case hex, no trailers.
        let r = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"0123456789");
    }

    #[test]
    fn until_eof_and_interim() {
        let r = parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n{}").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{}");
        // LF-only line ends are accepted too.
        let r = parse("HTTP/1.1 204 No Content\nServer: x\n\n").unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }

    #[test]
    fn error_bodies() {
        let r = parse("HTTP/1.1 404 Not Found\r\nContent-Length: 29\r\n\r\n{\"error\":\"no such vm: web9\"}\n").unwrap();
        assert_eq!(r.status, 404);
        let e = r.json::<serde_json::Value>().unwrap_err();
        assert!(matches!(e, Error::Api { status: 404, .. }));
        assert_eq!(e.to_string(), "no such vm: web9");
        // Not JSON: status and text.
        let r = parse("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\n\r\noops\n").unwrap();
        assert_eq!(r.error_message(), "502 Bad Gateway: oops");
        let r = parse("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(r.error_message(), "500 Internal Server Error");
        // A success whose body is not what we expect is a protocol error.
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot").unwrap();
        assert!(matches!(
            r.json::<serde_json::Value>(),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn malformed() {
        for s in [
            "",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1",
        ] {
            assert!(parse(s).is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(vm_path("web1", "/stop"), "/v1/vms/web1/stop");
        assert_eq!(vm_path("3", ""), "/v1/vms/3");
        assert_eq!(vm_path("a b/c", ""), "/v1/vms/a%20b%2Fc");
        assert_eq!(guestinfo_path("web1", None), "/v1/vms/web1/guestinfo");
        assert_eq!(
            guestinfo_path("web1", Some("guestinfo.a/b é")),
            "/v1/vms/web1/guestinfo/guestinfo.a%2Fb%20%C3%A9"
        );
    }
}
