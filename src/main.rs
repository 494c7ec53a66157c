//! The `vhdkit` command: a thin layer over the library (see `cli`).

#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
