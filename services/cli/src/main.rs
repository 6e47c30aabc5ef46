//! `cbir`: run the system and talk to it.

mod classify;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cbir",
    version,
    about = "Content-based image retrieval on deep CNN features"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole system on embedded defaults and stay in the
    /// foreground until Ctrl-C.
    Up(up::UpArgs),
    /// Classify images with the served network (ImageNet classes by default).
    Classify {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// One JSON object per image and line.
        #[arg(long)]
        json: bool,
        /// The inference service.
        #[arg(
            long,
            env = "CBIR_INFERENCE_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        inference: String,
    },
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Classify {
                images,
                json,
                inference,
            } => classify::run(&inference, &images, json).await,
        }
    })
}
