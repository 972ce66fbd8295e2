//! Errors. Messages follow fwup's wording where scripts grep for them.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Config syntax or semantic error: file, line and what is wrong.
    #[error("{file}:{line}: {msg}")]
    Config {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Archive structure (ZIP) problems.
    #[error("{0}")]
    Archive(String),
    /// Anything fwup reports with a plain message (apply/verify/sign failures).
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
