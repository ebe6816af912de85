#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    deepseek_client::main()
}
