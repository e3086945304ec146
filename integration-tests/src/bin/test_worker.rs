//! A worker process for fault tests and the chaos suite; see `integration_tests::worker`.

fn main() {
    let code = integration_tests::worker::run_worker_process(std::env::args().skip(1).collect());
    std::process::exit(code);
}
