//! `peer-client SOCKET PATH`: GETs PATH over the Unix socket and prints the
//! status line and body. The peer test runs it under another uid.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, path] = args.as_slice() else {
        eprintln!("usage: peer-client SOCKET PATH");
        return ExitCode::from(64);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(deepseek_tests::get(&PathBuf::from(socket), path)) {
        Ok(response) => {
            println!("{}", response.status);
            println!("{}", String::from_utf8_lossy(&response.body));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peer-client: {e}");
            ExitCode::FAILURE
        }
    }
}
