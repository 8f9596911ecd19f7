fn main() -> std::process::ExitCode {
    linegate::cli::main()
}
