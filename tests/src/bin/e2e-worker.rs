fn main() -> std::process::ExitCode {
    surgery_worker::cli::main()
}
