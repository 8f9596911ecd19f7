//! The `linegate` command line: parses arguments and runs one command.

use std::process::ExitCode;

pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
