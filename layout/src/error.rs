use std::path::PathBuf;

/// Errors from reading, planning or writing a layout. `Input` errors are the user's to fix
/// (the CLI exits 2 for them); the rest are I/O or tool failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The YAML did not parse (serde-saphyr's message names the line and column).
    #[error("{file}: {msg}")]
    Syntax { file: String, msg: String },

    /// A field's value is wrong; `line` is where the YAML says it.
    #[error("{file}:{line}: {field}: {msg}")]
    Field {
        file: String,
        line: usize,
        field: String,
        msg: String,
    },

    /// A host file the layout names could not be read.
    #[error("{file}:{line}: {field}: cannot read `{}`: {source}", path.display())]
    Input {
        file: String,
        line: usize,
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },

    /// Filling a region failed (a filesystem builder reported an error).
    #[error("region `{region}`: {msg}")]
    Fill { region: String, msg: String },

    /// The layout cannot be rendered as a fwup.conf.
    #[error("fwup.conf for layout `{layout}`: {msg}")]
    FwupConf { layout: String, msg: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// True when the layout or its inputs are at fault, not the machine.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::Syntax { .. }
                | Error::Field { .. }
                | Error::Input { .. }
                | Error::FwupConf { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
