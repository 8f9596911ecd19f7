//! The `linegate` binary: everything is in the library (`linegate::cli`).

fn main() -> std::process::ExitCode {
    linegate::cli::main()
}
