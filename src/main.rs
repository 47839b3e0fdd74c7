//! The `tollgate` command: wiring only. See the library crate for everything else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::{self, LogConfig, LogFormat};
use tollgate::demo::{Demo, DemoOptions};
use tollgate::{logging, App, Listeners};

/// An OAuth 2.0 bearer-token gateway for legacy HTTP APIs.
#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run the gateway with this configuration file (same as `tollgate run --config FILE`).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the effective configuration: the file with the TOLLGATE__ overrides applied and the
    /// route file's routes, secrets shown as ***.
    Config {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Print it (the only action for now; required, so that later actions stay explicit).
        #[arg(long, required = true)]
        print: bool,
    },
    /// Print the JSON Schema of the configuration file, for editors (taplo, VS Code's Even Better
    /// TOML: `#:schema ./tollgate.schema.json` as the file's first line).
    Schema {
        /// The schema of a route file (`server.routes_file`) instead.
        #[arg(long)]
        routes: bool,
    },
    /// Validate a configuration file (and its route file) and print a one-line summary.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Also reach out: fetch every issuer's discovery document and key set, and make one
        /// introspection call (for a made-up token) with the configured client authentication.
        #[arg(long)]
        online: bool,
        /// With --online: also log in to every session upstream once and log out again. This
        /// takes a licence seat for a moment.
        #[arg(long, requires = "online")]
        login_upstream: bool,
    },
    /// Start a demo issuer, a demo legacy API and the gateway in front of it, and print curl
    /// commands to try.
    Demo {
        /// Gateway listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
        /// Demo issuer listener.
        #[arg(long, default_value = "127.0.0.1:9000")]
        issuer_listen: std::net::SocketAddr,
        /// Demo legacy API listener.
        #[arg(long, default_value = "127.0.0.1:8081")]
        legacy_listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => Command::Run { config },
        (None, None) => {
            eprintln!(
                "tollgate: give --config FILE, or a subcommand (run, check, demo); see --help"
            );
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Check { config, .. } if config::is_routes_file(&config) => {
            match config::check_routes_file(&config) {
                Ok(n) => {
                    println!(
                        "{}: OK: route file with {n} route{}; its upstream and issuer names are checked with the configuration that sets server.routes_file",
                        config.display(),
                        if n == 1 { "" } else { "s" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Schema { routes } => {
            println!("{}", config::schema(routes));
            ExitCode::SUCCESS
        }
        Command::Config { config, print: _ } => match config::effective_toml(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            config,
            online,
            login_upstream,
        } => match config::load(&config) {
            Ok(cfg) if online => runtime(None, check_online(cfg, login_upstream)),
            Ok(cfg) => {
                println!("{}: OK: {}", config.display(), cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = logging::init(&cfg.log) {
                eprintln!("tollgate: logging: {e}");
                return ExitCode::FAILURE;
            }
            runtime(Some(&cfg.server.clone()), async move {
                let listeners = Listeners::bind(&cfg).await?;
                let app = App::start(&cfg, listeners)?;
                tracing::info!(config = %config.display(), summary = %cfg.summary(), version = tollgate::VERSION, "started");
                // SIGHUP and file changes reload the configuration.
                // A reload also re-reads the TLS certificate and key.
                // A reload also re-reads the admin token file.
                let tls = app.tls_reloader();
                let admin = app.admin_access();
                let hook: tollgate::reload::Hook =
                    std::sync::Arc::new(move |c: &tollgate::Config| {
                        tls.reload_tls(c.server.tls.as_ref())?;
                        admin.apply(&c.server);
                        Ok(())
                    });
                let reloader = tollgate::reload::spawn(
                    config.clone(),
                    app.gateway.clone(),
                    cfg.clone(),
                    Some(hook),
                    std::time::Duration::from_secs(1),
                );
                let reopener = tokio::spawn(reopen_access_file_on_sigusr1());
                wait_for_signal().await;
                reloader.abort();
                reopener.abort();
                tracing::info!("shutting down");
                app.shutdown().await;
                Ok(())
            })
        }
        Command::Demo {
            listen,
            admin_listen,
            issuer_listen,
            legacy_listen,
        } => {
            let log = LogConfig {
                level: "info".to_owned(),
                format: LogFormat::Text,
                access_file: None,
                subject: tollgate::config::SubjectLog::Hashed,
                subject_key: None,
            };
            if let Err(e) = logging::init(&log) {
                eprintln!("tollgate: logging: {e}");
                return ExitCode::FAILURE;
            }
            runtime(None, async move {
                let demo = Demo::start(&DemoOptions {
                    listen,
                    admin_listen,
                    issuer_listen,
                    legacy_listen,
                })
                .await?;
                println!("{}", demo.instructions());
                wait_for_signal().await;
                demo.shutdown().await;
                Ok(())
            })
        }
    }
}

/// `check --online`: each step on its own line, `ok` or `FAIL` with the reason; an error (exit
/// 1) when any failed.
async fn check_online(cfg: tollgate::Config, login_upstream: bool) -> anyhow::Result<()> {
    let gateway = tollgate::Gateway::new(&cfg, tollgate::metrics::Metrics::new()?)?;
    let mut steps = gateway.probe_issuers().await;
    if login_upstream {
        eprintln!("tollgate: --login-upstream logs in to each session upstream once: it takes a licence seat for a moment");
        steps.extend(gateway.probe_upstream_logins(&cfg).await);
    }
    let mut failed = 0;
    for (what, outcome) in steps {
        match outcome {
            Ok(detail) => println!("ok   {what}: {detail}"),
            Err(why) => {
                failed += 1;
                println!("FAIL {what}: {why}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} online check(s) failed");
    }
    Ok(())
}

/// Runs `fut` on the main thread's runtime for `server` (its `threads` and `scheduler`; the
/// gateway's other per-core threads are started by the server itself), or on one thread.
fn runtime(
    server: Option<&tollgate::config::ServerConfig>,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let (threads, scheduler) =
        match server.map(|s| (tollgate::runtime::threads(s.threads), s.scheduler)) {
            None => (1, tollgate::config::Scheduler::PerCore),
            Some((Ok(n), scheduler)) => (n, scheduler),
            Some((Err(e), _)) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(2);
            }
        };
    let rt = match tollgate::runtime::build(threads, scheduler) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
/// SIGUSR1 reopens `log.access_file` (after logrotate renamed it).
async fn reopen_access_file_on_sigusr1() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        while usr1.recv().await.is_some() {
            match logging::reopen_access_file() {
                Ok(()) => tracing::info!("access log file reopened"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reopen log.access_file; the old file stays in use")
                }
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
