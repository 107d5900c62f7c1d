use std::process::ExitCode;

fn main() -> ExitCode {
    regent_agent::cli::main()
}
