#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use cbir_inference::{serve, Config, SPEC};
    cbir_common::service::run_main(&SPEC, Config::load, serve).await
}
