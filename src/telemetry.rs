//! The tracing subscriber: text or JSON lines on stderr, `RUST_LOG` overrides the level.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Crates whose debug logs may show credentials.
const SDK_TARGETS: &[&str] = &[
    "aws_sigv4",
    "aws_runtime",
    "aws_config",
    "aws_sdk_s3",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_credential_types",
];

/// Writes each log event to stderr as one line: control characters inside it (a newline
/// in a schema name, a child's multi-line error) are escaped as `\xNN`, so no value can
/// forge a line of its own.
struct OneLine {
    ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OneLine {
    type Writer = OneLineWriter;
    fn make_writer(&'a self) -> OneLineWriter {
        OneLineWriter { ansi: self.ansi }
    }
}

struct OneLineWriter {
    ansi: bool,
}

/// `buf` with control characters escaped, except a final newline (and ANSI colour
/// escapes when colours are on).
fn escape_controls(buf: &[u8], ansi: bool) -> Vec<u8> {
    let (body, newline) = match buf.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (buf, false),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        if (b < 0x20 && b != b'\t' && !(ansi && b == 0x1b)) || b == 0x7f {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    if newline {
        out.push(b'\n');
    }
    out
}

impl std::io::Write for OneLineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(&escape_controls(buf, self.ansi))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Install the global subscriber. `default_level` applies when `RUST_LOG` is unset.
/// Set by one-shot commands: they print each failure themselves at the end (with its
/// hint), so the failure's own log line would only repeat it.
static FAILURES_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say that the command prints its failures itself.
pub fn failures_printed_by_caller() {
    FAILURES_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a run's failure should be logged as an error (the daemon) or only at debug
/// level (a one-shot command, which prints it once at its end).
pub fn log_failures() -> bool {
    !FAILURES_PRINTED.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn init(format: LogFormat, default_level: &str) {
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn")));
    // The AWS SDK's debug output carries the access key id (in signing scopes) and request
    // details; it stays at info whatever RUST_LOG asks for.
    for target in SDK_TARGETS {
        if let Ok(d) = format!("{target}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colours only for a person at a terminal, not for journald or a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(OneLine { ansi })
        .with_ansi(ansi)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn a_newline_in_a_value_cannot_forge_a_log_line() {
        let event = b"INFO archive stored schema=evil\nERROR forged line\n";
        let out = String::from_utf8(escape_controls(event, false)).unwrap();
        assert_eq!(
            out,
            "INFO archive stored schema=evil\\x0aERROR forged line\n"
        );
        assert_eq!(out.lines().count(), 1);
        assert_eq!(escape_controls(b"\x1b[1mbold\n", true), b"\x1b[1mbold\n");
        assert_eq!(escape_controls(b"\x1b[1m\n", false), b"\\x1b[1m\n");
    }
}
