//! The error convention: a message says what failed and never repeats its source; the
//! causes hang in the chain (`#[source]`), and wherever an error ends up (a log line, the
//! command line) it is shown whole, cause by cause, with [`Chain`].

use std::fmt;

/// Displays an error and its chain of sources: `what failed: why: the OS error`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding UDP 10.0.0.1:8472")]
    struct Bind {
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("data path")]
    struct Outer(#[from] Bind);

    #[test]
    fn chain_shows_every_cause_once() {
        let e = Outer(Bind {
            source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
        });
        let shown = Chain(&e).to_string();
        assert!(
            shown.starts_with("data path: binding UDP 10.0.0.1:8472: Address already in use"),
            "{shown}"
        );
        assert_eq!(shown.matches("already in use").count(), 1);
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(Chain(&io).to_string().contains("No such file"));
    }
}
