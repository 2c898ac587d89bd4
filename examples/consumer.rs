//! The thin consumer binary: reads its configuration, builds the registries
//! and runs the library's Kafka runtime, response sender, send API scheduler
//! and HTTP server;
//! also operates the dead-letter queue from the command line.
//!
//! With no `KAFKA_BOOTSTRAP_SERVERS` it starts an in-process broker (keeps
//! nothing on disk) and prints its address; with no `DATABASE_URL` it uses
//! `./orchestrator.db` (SQLite). `--demo` also produces a few sample
//! messages so the whole flow shows in the log.
//!
//! ```sh
//! cargo run --example consumer -- --demo
//! cargo run --example consumer -- dlq list --status failed
//! cargo run --example consumer -- dlq replay --all --failure-type ExternalServiceError --dry-run
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use orchestrator::dlq::{BulkReplay, DlqService};
use orchestrator::event::{Envelope, EventData, MessageContent, MessageReceived, MessageType};
use orchestrator::http::auth::Credentials;
use orchestrator::http::{self, AdminState, ApiState, HealthState, InboxState, WebhookState};
use orchestrator::kafka::topics::{self as kafka_topics, TopicCreation};
use orchestrator::kafka::{
    ConsumerRuntime, EmbeddedKafka, InboxFeed, KafkaConfig, Publisher, ResponseSender, RuntimeSettings, WebhookIngest,
};
use orchestrator::message_service::{MessageService, Scheduler};
use orchestrator::outbound::{CloudApiSender, DryRunSender, WhatsAppSender};
use orchestrator::settings::Settings;
use orchestrator::store::{DlqFilter, Page};
use orchestrator::{KeywordClassifier, Orchestrator, SqlStore};
use tokio::sync::watch;

/// Partitions of each topic on the embedded broker.
const EMBEDDED_PARTITIONS: i32 = 8;

/// WhatsApp Orchestrator's Kafka consumer.
///
/// Every setting is an environment variable (or the option beside it, given
/// before the command); each is listed below with its default.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Also produce a few sample messages (and one malformed one) at start-up.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Operate the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Check or create the design's Kafka topics on KAFKA_BOOTSTRAP_SERVERS.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print a JWT signed with JWT_SECRET (HS256), for trying the HTTP API.
    Token {
        /// The organisation it acts for (the JWT_ORG_CLAIM claim).
        #[arg(long)]
        org: Option<String>,
        /// Space-separated scopes; `admin` opens /admin.
        #[arg(long, default_value = "")]
        scope: String,
        /// How long it is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every topic of the design (with its .retry and .dlq) that is missing.
    Create {
        /// Partitions of each new topic (-1: the cluster's default) [default: KAFKA_TOPIC_PARTITIONS].
        #[arg(long, allow_negative_numbers = true)]
        partitions: Option<i32>,
        /// Replicas of each partition (-1: the cluster's default) [default: KAFKA_TOPIC_REPLICATION_FACTOR].
        #[arg(long, allow_negative_numbers = true)]
        replication_factor: Option<i32>,
    },
    /// List the design's topics the cluster lacks; exits with 1 if any.
    Check,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List entries, newest first (or, with --groups, grouped by failure cause).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Group by failure fingerprint instead of listing entries.
        #[arg(long)]
        groups: bool,
        /// Rows to skip.
        #[arg(long, default_value_t = 0, conflicts_with = "groups")]
        offset: u64,
    },
    /// Show one entry with its payload.
    Show { id: i64 },
    /// Replay one entry, or every failed entry matching the filters.
    Replay {
        /// The entry (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every failed entry matching the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Replays per second at most.
        #[arg(long, default_value_t = 50)]
        per_second: u32,
    },
    /// Discard one entry, or every failed entry matching the filters.
    Discard {
        /// The entry (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every failed entry matching the filters (like `queue:flush`).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// failed, replayed, discarded or resolved.
    #[arg(long)]
    status: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// SerializationError, ProcessingTimeout, ExternalServiceError, ValidationError or UnknownError.
    #[arg(long)]
    failure_type: Option<String>,
    /// Only entries created at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only this failure fingerprint (see `dlq list --groups`).
    #[arg(long)]
    fingerprint: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    limit: u64,
}

impl FilterArgs {
    fn filter(&self) -> Result<DlqFilter, String> {
        DlqFilter::parse(
            self.status.as_deref(),
            self.tenant.as_deref(),
            self.failure_type.as_deref(),
            self.since,
            self.fingerprint.as_deref(),
        )
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn sample(phone: &str, body: &str) -> Envelope {
    Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: format!("wamid.demo-{}", uuid::Uuid::new_v4().simple()),
            from_phone: phone.to_owned(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: body.to_owned() },
            received_at: Utc::now(),
            metadata: Default::default(),
        }),
        "consumer_demo",
    )
}

async fn database(settings: &Settings) -> Result<sea_orm::DatabaseConnection, Box<dyn std::error::Error>> {
    let url = &settings.database.database_url;
    let db = orchestrator::db::connect(url).await?;
    tracing::info!(database = %url.split('@').next_back().unwrap_or(url), "database ready, migrations applied");
    Ok(db)
}

/// mimalloc: on the load benchmark it cut the pipeline's CPU per message by
/// a third against glibc's malloc (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Every setting, read once: a value that does not parse stops here, naming its variable.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let settings = cli.settings;
    // Logs (human, or JSON with LOG_FORMAT=json) and traces (OTLP with OTEL_EXPORTER_OTLP_ENDPOINT).
    let telemetry = match orchestrator::telemetry::init(&settings.telemetry.config()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Events we publish say how many attempts their consumers allow.
    orchestrator::event::set_default_max_attempts(settings.pipeline.retry_policy().max_attempts());
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let described = orchestrator::settings::describe(&matches, &settings);
            let described: Vec<String> = described.into_iter().map(|(name, value)| format!("{name}={value}")).collect();
            tracing::info!(settings = %described.join(" "), "settings (secrets masked; `consumer --help` lists them)");
            run(&settings, cli.demo).await
        }
        Command::Migrate => database(&settings).await.map(|_| ()),
        Command::Dlq(command) => dlq(&settings, command).await,
        Command::Topics(command) => topics(&settings, command).await,
        Command::Token { org, scope, ttl } => token(&settings, org.as_deref(), &scope, ttl),
    };
    telemetry.flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Readable, not Debug: an operator reads this.
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `token` subcommand: prints an HS256 JWT.
fn token(settings: &Settings, org: Option<&str>, scope: &str, ttl: u64) -> Result<(), Box<dyn std::error::Error>> {
    let secret = settings.server.jwt_secret.as_ref().map(|s| s.expose()).filter(|s| !s.trim().is_empty());
    let secret = secret.ok_or("JWT_SECRET is not set: `token` signs with it")?;
    let claim = &settings.server.jwt_org_claim;
    let ttl = std::time::Duration::from_secs(ttl);
    println!("{}", http::auth::mint_hs256(secret.as_bytes(), claim, org, scope, ttl)?);
    Ok(())
}

/// The `topics` subcommands.
async fn topics(settings: &Settings, command: TopicsCommand) -> Result<(), Box<dyn std::error::Error>> {
    let kafka = settings.kafka.config()?;
    if kafka.bootstrap_servers.is_none() {
        return Err("KAFKA_BOOTSTRAP_SERVERS is not set (the embedded broker creates its topics itself)".into());
    }
    let all = kafka_topics::all_topics();
    match command {
        TopicsCommand::Check => {
            let missing = kafka_topics::missing_topics(&kafka, &all, kafka.timeout.max(TOPIC_TIMEOUT)).await?;
            if missing.is_empty() {
                println!("all {} topics exist", all.len());
                return Ok(());
            }
            Err(kafka_topics::MissingTopics(missing).into())
        }
        TopicsCommand::Create { partitions, replication_factor } => {
            let partitions = partitions.unwrap_or(settings.kafka.topic_partitions);
            let replication_factor = replication_factor.unwrap_or(settings.kafka.topic_replication_factor);
            let created =
                kafka_topics::create_topics(&kafka, &all, partitions, replication_factor, TOPIC_TIMEOUT).await?;
            let mut failed = 0;
            for (topic, outcome) in created {
                match outcome {
                    TopicCreation::Created => println!("created  {topic}"),
                    TopicCreation::Existed => println!("exists   {topic}"),
                    TopicCreation::Failed(reason) => {
                        failed += 1;
                        println!("FAILED   {topic}: {reason}");
                    }
                }
            }
            if failed > 0 { Err(format!("{failed} topic(s) not created").into()) } else { Ok(()) }
        }
    }
}

/// How long topic checks and creation may take.
const TOPIC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// On a real cluster: the design's topics must exist before consuming
/// (`KAFKA_CREATE_TOPICS=true` creates the missing ones). A cluster that
/// does not answer is not an error here: the clients keep trying to reach it.
async fn ensure_topics(settings: &Settings, kafka: &KafkaConfig) -> Result<(), Box<dyn std::error::Error>> {
    let all = kafka_topics::all_topics();
    let missing = match kafka_topics::missing_topics(kafka, &all, kafka.timeout).await {
        Ok(missing) => missing,
        Err(error) => {
            tracing::warn!(%error, "could not list the cluster's topics; starting anyway");
            return Ok(());
        }
    };
    if missing.is_empty() {
        return Ok(());
    }
    if !settings.kafka.create_topics {
        return Err(kafka_topics::MissingTopics(missing).into());
    }
    let (partitions, replication) = (settings.kafka.topic_partitions, settings.kafka.topic_replication_factor);
    for (topic, outcome) in kafka_topics::create_topics(kafka, &missing, partitions, replication, TOPIC_TIMEOUT).await?
    {
        match outcome {
            TopicCreation::Failed(reason) => {
                return Err(format!("creating Kafka topic {topic} failed: {reason}").into());
            }
            _ => tracing::info!(%topic, partitions, "Kafka topic created (KAFKA_CREATE_TOPICS=true)"),
        }
    }
    Ok(())
}

/// The `dlq` subcommands: print to stdout, fail with a readable message.
async fn dlq(settings: &Settings, command: DlqCommand) -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(SqlStore::new(database(settings).await?));
    let replays = matches!(command, DlqCommand::Replay { .. });
    // Replaying needs a broker that outlives this command: a real cluster, or
    // the embedded broker of a running consumer (its address is in its log).
    let kafka = settings.kafka.config()?;
    let service = match (&kafka.bootstrap_servers, replays) {
        (Some(_), true) => DlqService::new(store).with_publisher(Publisher::new(&kafka)?),
        _ => DlqService::new(store),
    };
    match command {
        DlqCommand::List { filter, groups: true, .. } => {
            print!("{}", orchestrator::dlq::groups_table(&service.groups(&filter.filter()?, filter.limit).await?));
        }
        DlqCommand::List { filter, offset, .. } => {
            let entries = service.list(&filter.filter()?, Page { limit: filter.limit, offset }).await?;
            print!("{}", orchestrator::dlq::table(&entries));
            println!("{} entr{}", entries.len(), if entries.len() == 1 { "y" } else { "ies" });
        }
        DlqCommand::Show { id } => {
            let entry = service.get(id).await?;
            println!("{}", serde_json::to_string_pretty(&http::admin::entry_json(&entry, true))?);
        }
        DlqCommand::Replay { id: Some(id), .. } => {
            let entry = service.replay(id).await?;
            // Where the copy went: the original topic, never its `.retry` twin.
            let topic = entry.source.map(|s| s.topic.trim_end_matches(".retry").to_owned()).unwrap_or_default();
            println!("replayed {id} to {topic} (replay #{})", entry.replay_count);
        }
        DlqCommand::Replay { id: None, filter, dry_run, per_second, .. } => {
            let options = BulkReplay { dry_run, limit: filter.limit, per_second };
            let report = service.replay_matching(&filter.filter()?, options).await?;
            if dry_run {
                println!(
                    "would replay {} entr{}: {:?}",
                    report.matched.len(),
                    plural(report.matched.len()),
                    report.matched
                );
            } else {
                println!(
                    "replayed {} of {} entr{}",
                    report.replayed.len(),
                    report.matched.len(),
                    plural(report.matched.len())
                );
                for (id, error) in &report.failed {
                    println!("  {id}: {error}");
                }
            }
        }
        DlqCommand::Discard { id: Some(id), .. } => {
            service.discard(id).await?;
            println!("discarded {id}");
        }
        DlqCommand::Discard { id: None, filter, .. } => {
            let discarded = service.discard_matching(&filter.filter()?, filter.limit).await?;
            println!("discarded {} entr{}: {discarded:?}", discarded.len(), plural(discarded.len()));
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "y" } else { "ies" }
}

async fn run(settings: &Settings, demo: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut kafka = settings.kafka.config()?;
    // Kept alive until the end: dropping it stops the broker.
    let _embedded = match &kafka.bootstrap_servers {
        Some(servers) => {
            tracing::info!(%servers, "using the Kafka cluster from KAFKA_BOOTSTRAP_SERVERS");
            ensure_topics(settings, &kafka).await?;
            None
        }
        None => {
            let embedded = EmbeddedKafka::start(EMBEDDED_PARTITIONS)?;
            tracing::info!(
                bootstrap_servers = %embedded.bootstrap_servers(),
                partitions = EMBEDDED_PARTITIONS,
                "embedded Kafka broker (librdkafka mock cluster) listening; it keeps nothing on disk"
            );
            kafka = embedded.configure(kafka);
            Some(embedded)
        }
    };
    // Every client gets these; secrets are masked.
    let client: Vec<String> = kafka.describe().into_iter().map(|(name, value)| format!("{name}={value}")).collect();
    tracing::info!(settings = %client.join(" "), "kafka client settings");

    let db = database(settings).await?;
    let raw_store = Arc::new(SqlStore::new(db.clone()).with_history(settings.server.conversation_history));
    let orchestrator = Arc::new(
        Orchestrator::builder()
            .handlers(handlers::builtin())
            .executors(executors::builtin(&db))
            .store(raw_store.clone())
            .retry_policy(settings.pipeline.retry_policy())
            .config(settings.pipeline.config())
            .build()?,
    );
    // Every other use of the database goes through the pipeline's breaker too.
    let store = orchestrator.guard(raw_store.clone());
    let cleanup = orchestrator::maintenance::spawn_dedupe_cleanup(store.clone(), std::time::Duration::from_secs(3600));

    let grace = settings.server.shutdown_grace();
    // In-flight records get most of the grace period; closing the clients the rest.
    let drain = grace.saturating_sub(grace / 5);
    let mut runtime = ConsumerRuntime::new(
        &kafka,
        orchestrator.clone(),
        Arc::new(KeywordClassifier),
        store.clone(),
        RuntimeSettings { shutdown_grace: drain, ..RuntimeSettings::default() },
    )?;
    match settings.pipeline.ai_route() {
        Some(ai) => {
            tracing::info!(
                timeout = ?ai.timeout,
                "INTENT_SOURCE=ai: intents come from the AI service (ai.process.request / ai.process.result); \
                 the keyword classifier answers when it is late"
            );
            runtime = runtime.with_ai_route(store.clone(), ai);
        }
        None => tracing::info!("intents from the built-in keyword classifier (INTENT_SOURCE=ai for the AI service)"),
    }
    let mut cloud_api = None;
    let whatsapp: Arc<dyn WhatsAppSender> = match settings.whatsapp.cloud_api()? {
        Some(cloud) => {
            tracing::info!(
                api_url = %cloud.api_url,
                default_number = %cloud.phone_number_id,
                numbers_with_own_token = cloud.tokens.len(),
                "sending replies through the WhatsApp Cloud API, from the number each message arrived on"
            );
            let sender = Arc::new(CloudApiSender::new(cloud, orchestrator::BreakerConfig::default())?);
            orchestrator.breakers().adopt(sender.breaker().clone());
            cloud_api = Some(sender.clone());
            sender
        }
        None => {
            tracing::info!("WHATSAPP_TOKEN / WHATSAPP_PHONE_NUMBER_ID not set: replies are logged, not sent (dry run)");
            Arc::new(DryRunSender)
        }
    };
    let reply_settings = orchestrator::kafka::ReplySettings {
        shutdown_grace: drain,
        ..settings.whatsapp.reply(settings.pipeline.retry_policy())
    };
    tracing::info!(
        max_send_rate = reply_settings.rate.max_rate,
        in_flight = reply_settings.max_in_flight,
        "reply sender: per business number at most WHATSAPP_MAX_SEND_RATE msg/s"
    );
    let sender = ResponseSender::new(&kafka, whatsapp, store.clone(), reply_settings)?;
    let reply_stats = sender.stats();
    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let sender_task = tokio::spawn(sender.run(wait(stopped.clone())));

    let publisher = Publisher::new(&kafka)?;
    let mut health = HealthState::new().probe("kafka", publisher.clone()).probe("database", db.clone());
    if let Some(cloud_api) = cloud_api {
        health = health.probe("whatsapp_cloud_api", cloud_api);
    }
    health.breakers = Some(orchestrator.breakers().clone());
    health.stats = Some(runtime.stats());
    health.replies = Some(reply_stats);
    let webhook = WebhookState::new(settings.whatsapp.webhook(), publisher.clone(), store.clone())
        .with_dead_letters(store.clone());
    if webhook.settings.app_secret.is_none() {
        tracing::warn!("WHATSAPP_APP_SECRET not set: webhook signatures are not checked");
    }
    // The edge-function path: raw webhook requests from whatsapp.webhook.inbound, handled like POSTs.
    let ingest_task = if settings.server.webhook_inbound_enabled {
        let ingest = WebhookIngest::new(&kafka, webhook.clone(), store.clone())?;
        tracing::info!("reading edge-function webhook requests from whatsapp.webhook.inbound");
        Some(tokio::spawn(ingest.run(wait(stopped.clone()))))
    } else {
        None
    };
    // The send API: conversations the business starts, through the same reply path.
    let messages =
        MessageService::new(raw_store.clone(), Arc::new(publisher.clone()), settings.server.message_service());
    health.message_service = Some(messages.clone());
    let scheduler_task = if settings.server.scheduler_enabled {
        let scheduler = Scheduler::new(raw_store.clone(), Arc::new(publisher.clone()), settings.server.scheduler());
        Some(tokio::spawn(scheduler.run(wait(stopped.clone()))))
    } else {
        tracing::info!("SCHEDULER_ENABLED=false: another replica publishes scheduled messages");
        None
    };
    let mut app = http::webhook::routes(webhook)
        .merge(http::health::routes(health))
        .merge(http::metrics::routes(Some(orchestrator.breakers().clone())));
    let jwt = settings.server.jwt()?;
    match &jwt {
        Some(jwt) => {
            app = app.merge(http::api::routes(ApiState::new(messages, jwt.clone(), settings.server.api_rate())))
        }
        None => tracing::info!("no JWT key set (JWT_SECRET or JWT_PUBLIC_KEY_FILE): the /api/v1 send API is off"),
    }
    let credentials = Credentials { admin_token: settings.server.admin_token(), jwt };
    let mut routes = vec!["/webhook", "/health", "/metrics"];
    if credentials.jwt.is_some() {
        routes.push("/api/v1/messages");
    }
    if credentials.any() {
        let dlq = DlqService::new(store.clone()).with_publisher(publisher.clone());
        let (token, jwt) = (credentials.admin_token.clone(), credentials.jwt.clone());
        app = app.merge(http::admin::routes(AdminState { dlq, token, jwt }));
        // The live inbox and the console, for organisations' JWTs and operators.
        let feed =
            InboxFeed::new(&kafka, settings.server.stream_max_connections as usize).with_shutdown(stopped.clone());
        let inbox = InboxState { credentials: credentials.clone(), conversations: raw_store.clone(), feed: Some(feed) };
        app = app.merge(http::inbox::routes(inbox)).merge(http::console::routes(credentials));
        routes.extend(["/admin/dlq", "/api/v1/stream", "/api/v1/conversations", "/console"]);
    } else {
        tracing::info!("neither ADMIN_TOKEN nor a JWT key set: /admin, the live inbox and /console are off");
    }
    let addr = settings.server.http_addr;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, routes = %routes.join(" "), "HTTP server listening");
    let http_task = tokio::spawn(http::serve(listener, app, wait(stopped.clone())));

    if demo {
        for (phone, text) in [
            ("+15551234567", "Hi! I want to order 2 tacos and 1 soda"),
            ("+5215512345678", "¿Cuánto cuesta la pizza familiar?"),
            ("+15551234567", "This is the worst service, my last order arrived broken"),
            ("+447700900123", "Please call me tomorrow morning"),
        ] {
            publisher.publish(&sample(phone, text)).await?;
        }
        publisher.send(orchestrator::event::topics::MESSAGES, Some("+15550000000"), b"{oops, not json", &[]).await?;
        tracing::info!("demo: produced 4 messages and 1 malformed one to conversation.messages");
    }

    // Not aborted when run() returns: the watchdog also bounds the clients'
    // own closing (a Kafka consumer whose broker is gone can block in close).
    let (missing_tx, mut missing_rx) = watch::channel(None);
    let _watchdog = tokio::spawn(async move {
        tokio::select! {
            _ = termination() => tracing::info!(?grace, "shutdown requested: finishing in-flight work"),
            missing = kafka_topics::missing_at_runtime() => {
                tracing::error!(%missing, "stopping: a publish cannot succeed until the topic exists");
                let _ = missing_tx.send(Some(missing));
            }
        }
        let _ = stop.send(true);
        tokio::time::sleep(grace).await;
        tracing::error!(
            ?grace,
            "shutdown did not finish within SHUTDOWN_GRACE_MS (is Kafka or the database unreachable?): exiting; \
             records not finished were not committed and will be redelivered"
        );
        std::process::exit(2);
    });
    runtime.run(wait(stopped)).await?;
    sender_task.await??;
    if let Some(ingest) = ingest_task {
        ingest.await??;
    }
    http_task.await??;
    if let Some(scheduler) = scheduler_task {
        scheduler.await?;
    }
    cleanup.abort();
    match missing_rx.borrow_and_update().clone() {
        Some(missing) => Err(missing.into()),
        None => Ok(()),
    }
}
