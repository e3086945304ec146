//! A worker process for fault tests and the chaos suite; see `integration_tests::worker`.

#[tokio::main]
async fn main() {
    let code = integration_tests::worker::worker_main(std::env::args().skip(1).collect()).await;
    std::process::exit(code);
}
