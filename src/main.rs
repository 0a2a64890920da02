//! The `mlguard` binary: parse the command line, set up logging, run a subcommand. All the
//! work lives in the library so that tests drive exactly what the binary runs.

use std::process::ExitCode;

use clap::Parser;
use mlguard::cli::{Cli, Command};

fn main() -> ExitCode {
    mlguard::alloc::disable_transparent_huge_pages();
    let cli = Cli::parse();
    mlguard::logging::init(&cli.log);
    if !matches!(cli.command, Command::Serve(_)) {
        stop_quietly_when_the_reader_goes();
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Certs(args) => report(mlguard::certs::run(&args).map(|_| ExitCode::SUCCESS)),
        Command::Audit(args) => mlguard::audit::run(&args),
        Command::Test(args) => mlguard::casefile::run(&args),
        Command::Bench(args) => mlguard::bench::run(&args),
        Command::Manifests(args) => mlguard::manifests::run(&args),
        Command::Version => {
            println!(
                "mlguard {} (commit {})",
                mlguard::metrics::VERSION,
                mlguard::metrics::COMMIT
            );
            ExitCode::SUCCESS
        }
        Command::Completions(args) => {
            mlguard::cli::completions(args.shell, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
    }
}

/// The commands that print (`audit`, `manifests`, `completions`, ...) end when their reader
/// does, as `mlguard manifests match-conditions | head` expects, instead of panicking on the
/// closed pipe. Rust ignores SIGPIPE so that a write reports the error; the server keeps that,
/// since a client that goes away must never stop it.
fn stop_quietly_when_the_reader_goes() {
    // SAFETY: restoring the default disposition of one signal, before any thread is started;
    // no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn serve(args: mlguard::cli::ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(Err(anyhow::anyhow!("cannot start the async runtime: {e}"))),
    };
    report(runtime.block_on(async move {
        let config = mlguard::config::ServeConfig::from_args(&args)?;
        let listeners = mlguard::serve::Listeners::bind(config.listen, config.probe_listen).await?;
        mlguard::serve::run(config, listeners, mlguard::serve::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }))
}

/// Start-up errors end the process with their message and exit status 2.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mlguard: {e:#}");
            ExitCode::from(2)
        }
    }
}
