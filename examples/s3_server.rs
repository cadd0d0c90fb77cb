//! The S3-compatible test server (s3s-fs) as a program, for benchmarks:
//! `cargo run --release --example s3_server -- DATA_DIR PORT`. Loopback only.
#![allow(dead_code)]

#[path = "../tests/common/s3.rs"]
mod s3;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(port)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: s3_server DATA_DIR PORT   (credentials: {} / {})",
            s3::S3_ACCESS_KEY,
            s3::S3_SECRET_KEY
        );
        std::process::exit(2);
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("port")))
        .await
        .expect("bind");
    println!(
        "s3 test server on http://{}",
        listener.local_addr().expect("addr")
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    s3::serve(std::path::PathBuf::from(root), listener, stop).await;
}
