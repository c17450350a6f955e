//! The `portcullis` binary: everything is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
