//! The `portcullis` binary: everything is in the library's `cli` module.

/// mimalloc instead of the system allocator: the decision path allocates
/// small, short-lived values on every request (see `Cargo.toml`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
