//! Connections that open with an event stream, served without hyper's buffers.
//!
//! An idle event stream is one open connection for as long as its client follows. hyper keeps
//! two buffers of 8 KB for every connection it serves (requests are read into one, response
//! heads written from the other), and for 10k idle streams those were 16 of the 21 KB each
//! cost (heaptrack). So a connection whose first request asks for a stream, plainly, is
//! answered here: the request head is parsed from a peek at the socket, handed to the same
//! router, and the response written as it comes, chunked, holding nothing but the stream.
//!
//! "Plainly" is narrow on purpose: `GET /v1/events` over HTTP/1.1, `Accept:
//! text/event-stream`, no body, no upgrade, and the whole head in the first bytes that
//! arrived (as clients send it). Anything else goes to hyper with the socket untouched. A
//! refused stream (a bad key, a bad filter) is answered here and the connection then goes to
//! hyper for whatever the client asks next; a stream that ends closes its connection. A stream
//! asked for later on a connection hyper already serves (a client reusing a pooled one) stays
//! with hyper and costs what it did before.

use std::io::Write as _;
use std::pin::Pin;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, Version};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;
use tower::util::Oneshot;

/// The start of every request taken here.
const PREFIX: &[u8] = b"GET /v1/events";
/// The longest request head taken here; a longer one goes to hyper.
const MAX_HEAD: usize = 8 * 1024;
/// The most header lines taken here.
const MAX_HEADERS: usize = 32;

/// What a connection does after its first answer.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Serve the client's next requests (through hyper).
    KeepServing,
    /// Close: the stream ended, the client left or asked to close, or writing failed.
    Close,
}

/// The connection's first request, read off the socket, if it is an event stream asked for
/// plainly; otherwise `None`, and nothing has been read (unless the client left meanwhile).
pub async fn stream_request(socket: &mut TcpStream) -> Option<Request<Body>> {
    let mut start = [0; PREFIX.len()];
    let seen = socket.peek(&mut start).await.ok()?;
    if start[..seen] != *PREFIX {
        return None;
    }
    let mut head = vec![0; MAX_HEAD];
    let seen = socket.peek(&mut head).await.ok()?;
    let (request, len) = parse(&head[..seen])?;
    // The bytes just parsed are the ones read here: a peek never hands out more than is there.
    socket.read_exact(&mut head[..len]).await.ok()?;
    Some(request)
}

/// The request in `bytes` and its head's length, if it is one this module answers.
fn parse(bytes: &[u8]) -> Option<(Request<Body>, usize)> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut lines);
    let httparse::Status::Complete(len) = head.parse(bytes).ok()? else {
        return None;
    };
    let path = head.path?;
    if head.method != Some("GET")
        || head.version != Some(1)
        || path.split('?').next() != Some("/v1/events")
    {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    let mut wants_stream = false;
    for line in head.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(line.value).ok()?;
        match name {
            // A body, or a protocol switch: hyper's to handle.
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::UPGRADE
            | header::EXPECT => {
                return None;
            }
            header::ACCEPT => {
                wants_stream |= value
                    .to_str()
                    .is_ok_and(|v| v.contains("text/event-stream"));
            }
            _ => {}
        }
        request = request.header(name, value);
    }
    let request = request.body(Body::empty()).ok()?;
    wants_stream.then_some((request, len))
}

/// The router's answer to a request, under way: boxed, so its room is freed once the answer
/// is in hand (see [`answer`]).
type Answering = Pin<Box<Oneshot<Router, Request<Body>>>>;

/// Answers `request` on `socket` through `router`, writing the response as its body yields.
/// An event stream is written until it ends or its client leaves; any other answer whole.
///
/// A future holds room for its largest state, and for its arguments, for as long as it lives:
/// this one lives as long as its stream is open, in the task of the stream's connection. So
/// the request goes into the router's call here, before anything waits, and that call is
/// boxed (held inline, the two took about 750 bytes); what is held while the stream is open
/// is the body and a few buffers.
pub fn answer(
    socket: &mut TcpStream,
    request: Request<Body>,
    router: Router,
) -> impl Future<Output = After> + '_ {
    let client_closes = wants_close(&request);
    write_answer(socket, Box::pin(router.oneshot(request)), client_closes)
}

async fn write_answer(socket: &mut TcpStream, answering: Answering, client_closes: bool) -> After {
    let response = match answering.await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (head, framing) = response_head(&response, is_stream);
    let mut body = response.into_body().into_data_stream();
    if socket.write_all(&head).await.is_err() {
        return After::Close;
    }
    drop(head);
    let (mut from_client, mut to_client) = socket.split();
    let mut scratch = [0; 64];
    loop {
        let data = tokio::select! {
            data = body.next() => data,
            // While a stream is open its client says nothing; a read that returns is it
            // leaving (or sending what a closing connection need not answer).
            read = from_client.read(&mut scratch), if is_stream => match read {
                Ok(n) if n > 0 => continue,
                _ => return After::Close,
            },
        };
        let bytes = match data {
            Some(Ok(bytes)) => bytes,
            None => break,
            Some(Err(e)) => {
                // As hyper does: a body that fails ends its connection mid-answer.
                tracing::debug!(error = %e, "response body failed");
                return After::Close;
            }
        };
        if bytes.is_empty() {
            continue;
        }
        let written = match framing {
            Framing::Length(_) => to_client.write_all(&bytes).await,
            Framing::Chunked => {
                // Each chunk's frame is made for it and freed once written: a stream waits far
                // longer between events than an allocation takes, and a buffer kept between
                // them would hold its largest event's room for as long as it is open.
                let mut frame = Vec::with_capacity(bytes.len() + 12);
                // Writing to a Vec cannot fail.
                let _ = write!(frame, "{:x}\r\n", bytes.len());
                frame.extend_from_slice(&bytes);
                frame.extend_from_slice(b"\r\n");
                to_client.write_all(&frame).await
            }
        };
        if written.is_err() {
            return After::Close;
        }
    }
    if framing == Framing::Chunked && to_client.write_all(b"0\r\n\r\n").await.is_err() {
        return After::Close;
    }
    if is_stream || client_closes {
        let _ = to_client.shutdown().await;
        return After::Close;
    }
    After::KeepServing
}

/// How a response's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `content-length`: the body's size is known.
    Length(u64),
    /// `transfer-encoding: chunked`: it is not (an event stream).
    Chunked,
}

/// The status line and headers of `response`, with what hyper would add: its framing, the
/// date and, for a stream (after which the connection closes), `connection: close`.
fn response_head(response: &Response<Body>, is_stream: bool) -> (Vec<u8>, Framing) {
    let status = response.status();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    // The framing written below is the one the body is sent with, whatever a handler said.
    for (name, value) in response.headers() {
        if [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
        ]
        .contains(name)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let framing = match response.body().size_hint().exact() {
        Some(n) if !is_stream => Framing::Length(n),
        _ => Framing::Chunked,
    };
    match framing {
        Framing::Length(n) => {
            head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if is_stream {
        head.extend_from_slice(b"connection: close\r\n");
    }
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    head.extend_from_slice(format!("date: {date}\r\n\r\n").as_bytes());
    (head, framing)
}

/// Whether the client asked to close the connection after this request.
fn wants_close(request: &Request<Body>) -> bool {
    request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Option<usize> {
        parse(text.as_bytes()).map(|(_, len)| len)
    }

    #[test]
    fn a_plain_stream_request_is_taken_whole() {
        let text =
            "GET /v1/events?session=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        let (request, len) = parse(text.as_bytes()).expect("taken");
        assert_eq!(len, text.len());
        assert_eq!(request.uri().query(), Some("session=a"));
        assert_eq!(request.headers()["host"], "x");
    }

    /// An open stream's connection holds its answer's future for as long as the stream is
    /// open, ten thousand of them at once on a busy instance: the future stays small (the
    /// router's call boxed and freed, the request not kept), not the kilobyte and more it was.
    #[tokio::test]
    async fn an_answer_under_way_holds_only_its_body_and_a_few_buffers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let text = "GET /v1/events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n";
        let (request, _) = parse(text.as_bytes()).expect("taken");
        let answering = answer(&mut socket, request, Router::new());
        let size = std::mem::size_of_val(&answering);
        assert!(size <= 512, "an answer under way takes {size} bytes");
    }

    #[test]
    fn anything_but_a_plain_stream_request_is_left_to_hyper() {
        let stream = "Accept: text/event-stream\r\n";
        for text in [
            // Not a stream, or not this path.
            "GET /v1/events HTTP/1.1\r\nAccept: application/json\r\n\r\n".to_string(),
            format!("GET /v1/eventsx HTTP/1.1\r\n{stream}\r\n"),
            format!("GET /v1/events/1 HTTP/1.1\r\n{stream}\r\n"),
            // Another version, a body, an upgrade.
            format!("GET /v1/events HTTP/1.0\r\n{stream}\r\n"),
            format!("GET /v1/events HTTP/1.1\r\n{stream}Content-Length: 2\r\n\r\nhi"),
            format!("GET /v1/events HTTP/1.1\r\n{stream}Transfer-Encoding: chunked\r\n\r\n"),
            format!("GET /v1/events HTTP/1.1\r\n{stream}Upgrade: websocket\r\n\r\n"),
            // Not all there yet.
            format!("GET /v1/events HTTP/1.1\r\n{stream}"),
        ] {
            assert_eq!(head(&text), None, "{text:?}");
        }
    }
}
