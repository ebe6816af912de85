//! `peer-client SOCKET PATH`: GETs PATH over the Unix socket and prints the
//! status line and body. The peer tests run it under another uid.
//!
//! `peer-client --repeat N SOCKET PATH`: N GETs, one connection each, and
//! prints each status on its own line.
//!
//! `peer-client --hold N SOCKET`: opens N connections, prints `connected N`,
//! sends nothing and keeps them open until its stdin closes.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.as_slice() {
        [hold, count, socket] if hold == "--hold" => {
            let count: usize = count.parse().expect("count");
            let held: Vec<std::os::unix::net::UnixStream> = (0..count)
                .map(|_| std::os::unix::net::UnixStream::connect(socket).expect("connect"))
                .collect();
            println!("connected {}", held.len());
            std::io::stdout().flush().expect("stdout");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
            ExitCode::SUCCESS
        }
        [repeat, count, socket, path] if repeat == "--repeat" => {
            let count: usize = count.parse().expect("count");
            let socket = PathBuf::from(socket);
            for _ in 0..count {
                match runtime.block_on(deepseek_tests::get(&socket, path)) {
                    Ok(response) => println!("{}", response.status),
                    Err(e) => println!("error {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        [socket, path] => match runtime.block_on(deepseek_tests::get(&PathBuf::from(socket), path))
        {
            Ok(response) => {
                println!("{}", response.status);
                println!("{}", String::from_utf8_lossy(&response.body));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("peer-client: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: peer-client SOCKET PATH | --repeat N SOCKET PATH | --hold N SOCKET");
            ExitCode::from(64)
        }
    }
}
