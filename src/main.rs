//! The `argocd-gateway` binary: install the crypto provider, parse flags, start logging, dispatch.

fn main() -> std::process::ExitCode {
    argocd_gateway::tls::install_crypto_provider();
    let cli = argocd_gateway::cli::Cli::parse_args();
    argocd_gateway::telemetry::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(argocd_gateway::cli::dispatch(cli));
    // The command has drained what it owns (or was aborted by a second signal): tasks still
    // running are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
