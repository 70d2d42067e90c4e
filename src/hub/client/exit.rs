//! The exit codes of the `hub …` client commands, and the typed error that decides them. The
//! codes are part of the CLI's contract (deployment scripts branch on them), so they live in
//! one place and `--help` prints [`EXIT_CODES_HELP`].

use std::process::ExitCode;

/// The command did what was asked; `wait`: every application is Deployed (Synced and Healthy
/// at the revision, operation finished); `token status --wait`: the install is complete.
pub const OK: u8 = 0;
/// `wait`: an application Failed or was Overwritten, or the count was wrong; `token status`:
/// an install step failed.
pub const FAILED: u8 = 1;
/// `wait`, `token status --wait`: the timeout passed first.
pub const TIMEOUT: u8 = 2;
/// The hub answered with an error: not found, forbidden, the gateway is disconnected, …
pub const REFUSED: u8 = 3;
/// The hub API could not be reached, or did not answer in time.
pub const UNREACHABLE: u8 = 4;
/// The command line is wrong (flags, arguments, an unreadable token file); EX_USAGE.
pub const USAGE: u8 = crate::cli::EXIT_CONFIG;
/// Interrupted (Ctrl-C).
pub const INTERRUPTED: u8 = crate::cli::EXIT_ABORTED;

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done; `wait`: every application Deployed; `token status --wait`: installed
  1    `wait`: Failed or Overwritten, or not --expect-count applications; `token status`:
       an install step failed
  2    `wait`, `token status --wait`: --timeout passed first
  3    the hub answered with an error (not found, forbidden, gateway disconnected, …)
  4    the hub API could not be reached or did not answer (flag --hub-api)
  64   usage: a wrong flag or argument, an unreadable --admin-token-file
  130  interrupted (Ctrl-C)";

/// Why a client command could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub API did not answer.
    #[error("cannot reach the hub API at {base} (flag --hub-api): {detail}")]
    Unreachable {
        /// The API address tried.
        base: String,
        /// What went wrong (connection refused, no answer within …).
        detail: String,
    },
    /// The hub answered with an error status.
    #[error("hub API {status} {path}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The request path.
        path: String,
        /// The hub's `error` text.
        message: String,
        /// The hub's `code`, when it sent one.
        code: Option<String>,
    },
    /// The command line cannot work as given.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The exit code this error ends the command with.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => UNREACHABLE,
            ClientError::Refused { .. } => REFUSED,
            ClientError::Usage(_) => USAGE,
        }
    }
}

/// The exit code for an error a client command returned: its [`ClientError`]'s, else
/// [`REFUSED`] (an answer the command could not use).
pub fn code_for(e: &anyhow::Error) -> ExitCode {
    ExitCode::from(e.downcast_ref::<ClientError>().map_or(REFUSED, ClientError::exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_own_documented_code() {
        let unreachable = ClientError::Unreachable {
            base: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        let refused = ClientError::Refused {
            status: 404,
            path: "/api/v1/gateways/x".into(),
            message: "not found".into(),
            code: Some("not_found".into()),
        };
        let usage = ClientError::Usage("give the application as namespace/name".into());
        let codes = [unreachable.exit_code(), refused.exit_code(), usage.exit_code()];
        assert_eq!(codes, [UNREACHABLE, REFUSED, USAGE]);
        for code in codes.iter().chain(&[OK, FAILED, TIMEOUT, INTERRUPTED]) {
            assert!(
                EXIT_CODES_HELP
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit code {code} is documented"
            );
        }
        assert!(unreachable.to_string().contains("--hub-api"));
        // Through anyhow, as the commands return it.
        assert_eq!(code_for(&anyhow::Error::new(usage)), ExitCode::from(USAGE));
        assert_eq!(code_for(&anyhow::anyhow!("odd answer")), ExitCode::from(REFUSED));
    }
}
