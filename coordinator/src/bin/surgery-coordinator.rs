fn main() -> std::process::ExitCode {
    surgery_coordinator::cli::main()
}
