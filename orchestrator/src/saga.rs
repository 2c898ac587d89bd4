//! Runs a handler's actions as a saga with a durable log.
//!
//! Every transition is appended to the saga log before the runner moves on,
//! so a run interrupted at any point and started again for the same message
//! resumes: succeeded steps are not executed again, an interrupted
//! compensation carries on. When a step fails, the steps before it are
//! compensated in reverse order.
//!
//! A plan's trailing local steps are the exception
//! ([`run_until_local`](SagaRunner::run_until_local), see [`crate::local`]):
//! they are checked here and written by the completion, in its
//! transaction, with no log rows of their own.
//!
//! Every external step logs its start, with the previous step's success in
//! the same write, and its own success before the message moves on. The
//! `started` row is what names the step in flight: a run resumed after its
//! worker died learns from it which step may have had an effect, and undoes
//! that effect by key if the step then fails or the handler now plans
//! something else; an idempotency key alone cannot say which action a dead
//! worker was running. The last step's success is not deferred to the
//! completion's transaction either: a completion that fails (a lost lease, a
//! database error) would turn a known success, undone from its output, into
//! an unknown outcome that only [`compensate_unknown`] can undo.
//!
//! [`compensate_unknown`]: crate::ActionExecutor::compensate_unknown

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::breaker::{BreakerError, BreakerRegistry};
use crate::context::MessageContext;
use crate::event::FailureType;
use crate::executor::{ActionContext, ActionError, ActionOutput};
use crate::executor_registry::ExecutorRegistry;
use crate::handler::ActionRequest;
use crate::local::{LocalExecutor, LocalFailure, LocalStep};
use crate::store::{Lease, SagaLog, StepRecord, StepStatus, StoreError};

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepFailure {
    /// The executor returned an error.
    #[error("{0}")]
    Action(ActionError),
    /// The executor took longer than the action timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The executor's circuit breaker is open: nothing was called.
    #[error("circuit `{circuit}` is open")]
    CircuitOpen {
        /// The open breaker's name (the executor's action name).
        circuit: String,
        /// Time until it lets a probe through.
        retry_after: Duration,
    },
    /// No executor is registered for the action.
    #[error("no executor registered for action `{0}`")]
    UnknownAction(String),
    /// The handler planned different actions than the log of this run records
    /// (a non-deterministic handler): resuming would be unsafe.
    #[error("step {step_index} was `{recorded}` in the saga log but is now `{planned}`")]
    PlanChanged {
        /// Position of the step whose action differs, 0-based.
        step_index: u32,
        /// Action in the log.
        recorded: String,
        /// Action planned now.
        planned: String,
    },
}

impl StepFailure {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepFailure::Action(error) => error.is_retryable(),
            StepFailure::Timeout(_) | StepFailure::CircuitOpen { .. } => true,
            StepFailure::UnknownAction(_) | StepFailure::PlanChanged { .. } => false,
        }
    }

    /// The dead-letter `failure_type` this failure is filed under.
    pub fn failure_type(&self) -> FailureType {
        match self {
            StepFailure::Timeout(_) => FailureType::ProcessingTimeout,
            StepFailure::Action(_) | StepFailure::CircuitOpen { .. } => FailureType::ExternalServiceError,
            StepFailure::UnknownAction(_) | StepFailure::PlanChanged { .. } => FailureType::UnknownError,
        }
    }
}

/// A step that succeeded in this run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// Position in the saga.
    pub step_index: u32,
    /// Action name.
    pub action: String,
    /// The executor's output.
    pub output: ActionOutput,
    /// Taken from the saga log of an interrupted run rather than executed now.
    pub resumed: bool,
}

/// A compensation that failed and needs a person.
#[derive(Debug, Clone, PartialEq)]
pub struct CompensationFailure {
    /// Position in the saga.
    pub step_index: u32,
    /// Action name.
    pub action: String,
    /// What the executor's `compensate` answered; a person undoes the step.
    pub error: String,
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaReport {
    /// Every step succeeded.
    Succeeded {
        /// The steps, in order.
        steps: Vec<StepOutcome>,
    },
    /// A step failed; the steps before it were compensated.
    Failed {
        /// The failed step.
        step_index: u32,
        /// The failed step's action name.
        action: String,
        /// Why it failed.
        failure: StepFailure,
        /// Steps undone, in the order they were undone.
        compensated: Vec<u32>,
        /// Compensations that failed.
        compensation_failures: Vec<CompensationFailure>,
    },
}

/// The latest log state of one step.
#[derive(Debug, Clone, Default)]
struct StepState {
    /// The action the log names for this step.
    action: Option<String>,
    status: Option<StepStatus>,
    output: Option<Value>,
    /// A `Failed` record exists for the step (its status may have moved on to compensation).
    failed: bool,
    error: Option<String>,
    retryable: Option<bool>,
    /// The failed execution may have had an effect (timed out, or an earlier
    /// execution in this run was interrupted): it is undone by idempotency key.
    uncertain: bool,
}

/// Runs sagas against an executor registry, with one breaker per executor.
#[derive(Clone)]
pub struct SagaRunner {
    executors: Arc<ExecutorRegistry>,
    breakers: Arc<BreakerRegistry>,
    log: Arc<dyn SagaLog>,
    action_timeout: Duration,
}

impl SagaRunner {
    /// A runner writing its steps to `log`.
    pub fn new(
        executors: Arc<ExecutorRegistry>,
        breakers: Arc<BreakerRegistry>,
        log: Arc<dyn SagaLog>,
        action_timeout: Duration,
    ) -> Self {
        Self { executors, breakers, log, action_timeout }
    }

    /// Runs (or resumes) the saga of `ctx.run` under `lease`. Errors only
    /// when the log cannot be read or written (or the lease was lost); the
    /// message should then be delivered again later.
    pub async fn run(
        &self,
        lease: &Lease,
        ctx: &MessageContext,
        actions: &[ActionRequest],
    ) -> Result<SagaReport, StoreError> {
        Ok(self.run_steps(lease, ctx, actions, actions.len(), false).await?.0)
    }

    /// [`run`](Self::run) up to the trailing local run, which starts at
    /// `local_from` (see [`crate::local`]): its steps are checked, not
    /// executed, and returned for the completion to write. Steps of it that
    /// an earlier run already logged are resumed from the log instead.
    pub async fn run_until_local(
        &self,
        lease: &Lease,
        ctx: &Arc<MessageContext>,
        actions: &[ActionRequest],
        local_from: usize,
    ) -> Result<(SagaReport, Vec<LocalStep>), StoreError> {
        let (report, checked) = self.run_steps(lease, ctx, actions, local_from, false).await?;
        let local = checked
            .into_iter()
            .map(|(step_index, executor)| LocalStep {
                executor,
                message: ctx.clone(),
                params: actions[step_index as usize].params.clone(),
                step_index,
            })
            .collect();
        Ok((report, local))
    }

    /// Records that the trailing local step of `failure` failed in the
    /// completion transaction (which wrote nothing) and compensates the
    /// logged steps before it, as for any failed step.
    pub async fn fail_local(
        &self,
        lease: &Lease,
        ctx: &MessageContext,
        actions: &[ActionRequest],
        failure: &LocalFailure,
    ) -> Result<SagaReport, StoreError> {
        count_action(&failure.action, "failed");
        let mut record = StepRecord::new(failure.step_index, &failure.action, StepStatus::Failed);
        record.error = Some(failure.error.to_string());
        record.retryable = Some(failure.error.is_retryable());
        record.output = Some(json!({ "uncertain": false }));
        self.record(lease, ctx, record).await?;
        Ok(self.run_steps(lease, ctx, actions, actions.len(), true).await?.0)
    }

    /// Runs the steps before `local_from` and checks those from it on;
    /// `reload` reads the log even for a fresh claim.
    async fn run_steps(
        &self,
        lease: &Lease,
        ctx: &MessageContext,
        actions: &[ActionRequest],
        local_from: usize,
        reload: bool,
    ) -> Result<(SagaReport, Vec<(u32, Arc<dyn LocalExecutor>)>), StoreError> {
        let mut states = vec![StepState::default(); actions.len()];
        let mut plan_changed = None;
        // Attempt 1 of run 1 is a claim row just inserted: every reuse of a
        // row raises one of them (a taken-over lease the attempt, a released
        // or reopened claim the run), so there is no log to read: one round
        // trip saved per new message.
        let fresh = ctx.attempt == 1 && ctx.run == 1 && !reload;
        let records = if fresh { Vec::new() } else { self.log.load_steps(&lease.key, ctx.run).await? };
        for record in records {
            let index = record.step_index as usize;
            if index >= states.len() {
                states.resize(index + 1, StepState::default());
            }
            let planned = actions.get(index).map(|a| a.action.as_str());
            if planned != Some(record.action.as_str()) && plan_changed.is_none() {
                plan_changed = Some(StepFailure::PlanChanged {
                    step_index: record.step_index,
                    recorded: record.action.clone(),
                    planned: planned.unwrap_or_default().to_owned(),
                });
            }
            let state = &mut states[index];
            state.status = Some(record.status);
            state.action = Some(record.action);
            if record.status == StepStatus::Failed {
                state.failed = true;
                state.error = record.error;
                state.retryable = record.retryable;
                state.uncertain =
                    record.output.as_ref().and_then(|o| o.get("uncertain")).and_then(Value::as_bool) == Some(true);
            } else if record.output.is_some() {
                state.output = record.output;
            }
        }

        if let Some(failure) = plan_changed {
            let StepFailure::PlanChanged { step_index, .. } = &failure else { unreachable!() };
            let failed = *step_index as usize;
            return Ok((self.fail(lease, ctx, actions, &mut states, failed, failure, false).await?, Vec::new()));
        }

        // A run that already failed (its worker died while compensating): finish compensating.
        if let Some(failed) = states.iter().position(|s| s.failed) {
            let failure = recorded_failure(&states[failed]);
            return Ok((self.fail(lease, ctx, actions, &mut states, failed, failure, false).await?, Vec::new()));
        }
        if let Some(last) = states
            .iter()
            .rposition(|s| matches!(s.status, Some(StepStatus::Compensated | StepStatus::CompensationFailed)))
        {
            let failure = StepFailure::Action(ActionError::Retryable("saga interrupted while compensating".into()));
            return Ok((self.fail(lease, ctx, actions, &mut states, last + 1, failure, false).await?, Vec::new()));
        }
        // Steps an earlier run logged resume from the log, local or not.
        let local_from = local_from.max(states.iter().rposition(|s| s.status.is_some()).map_or(0, |last| last + 1));

        let mut steps = Vec::with_capacity(actions.len());
        let mut local = Vec::new();
        // A step's success is logged with the next step's start, in one
        // write: one round trip less per step, and the log reads the same.
        let mut succeeded: Option<StepRecord> = None;
        for (index, request) in actions.iter().enumerate() {
            let step_index = index as u32;
            if states[index].status == Some(StepStatus::Succeeded) {
                let output = ActionOutput(states[index].output.clone().unwrap_or(Value::Null));
                steps.push(StepOutcome { step_index, action: request.action.clone(), output, resumed: true });
                continue;
            }
            if index >= local_from {
                match self.check_local(ctx, request, step_index) {
                    Ok(executor) => {
                        local.push((step_index, executor));
                        continue;
                    }
                    Err(failure) => {
                        if let Some(last) = succeeded.take() {
                            self.record(lease, ctx, last).await?;
                        }
                        let report = self.fail(lease, ctx, actions, &mut states, index, failure, true).await?;
                        return Ok((report, Vec::new()));
                    }
                }
            }
            // Started but never finished: an earlier execution of this run was interrupted.
            let interrupted_before = states[index].status == Some(StepStatus::Started);
            let started = StepRecord::new(step_index, &request.action, StepStatus::Started);
            match succeeded.take() {
                Some(previous) => self.log.record_steps(lease, ctx.run, &[previous, started]).await?,
                None => self.record(lease, ctx, started).await?,
            }
            match self.execute(ctx, request, step_index).await {
                Ok(output) => {
                    let mut record = StepRecord::new(step_index, &request.action, StepStatus::Succeeded);
                    record.output = Some(output.0.clone());
                    succeeded = Some(record);
                    states[index].status = Some(StepStatus::Succeeded);
                    states[index].output = Some(output.0.clone());
                    steps.push(StepOutcome { step_index, action: request.action.clone(), output, resumed: false });
                }
                Err(failure) => {
                    let state = &mut states[index];
                    state.uncertain = interrupted_before || matches!(failure, StepFailure::Timeout(_));
                    let report = self.fail(lease, ctx, actions, &mut states, index, failure, true).await?;
                    return Ok((report, Vec::new()));
                }
            }
        }
        if let Some(last) = succeeded {
            self.record(lease, ctx, last).await?;
        }
        Ok((SagaReport::Succeeded { steps }, local))
    }

    /// Checks a step of the trailing local run ([`LocalExecutor::check`]).
    fn check_local(
        &self,
        ctx: &MessageContext,
        request: &ActionRequest,
        step_index: u32,
    ) -> Result<Arc<dyn LocalExecutor>, StepFailure> {
        let executor =
            self.executors.local(&request.action).ok_or_else(|| StepFailure::UnknownAction(request.action.clone()))?;
        let action_ctx = ActionContext { message: ctx, params: &request.params, step_index };
        executor.check(&action_ctx).map_err(|error| {
            count_action(&request.action, "failed");
            StepFailure::Action(error)
        })?;
        Ok(executor.clone())
    }

    /// Records the failure of step `failed` (when `record_failure`) and
    /// compensates, in reverse order, every logged step not undone yet: the
    /// succeeded ones from their output, the failed one by idempotency key
    /// when its execution may have had an effect.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        lease: &Lease,
        ctx: &MessageContext,
        actions: &[ActionRequest],
        states: &mut [StepState],
        failed: usize,
        failure: StepFailure,
        record_failure: bool,
    ) -> Result<SagaReport, StoreError> {
        let action = action_name(actions, states, failed).to_owned();
        if record_failure {
            let mut record = StepRecord::new(failed as u32, &action, StepStatus::Failed);
            record.error = Some(failure.to_string());
            record.retryable = Some(failure.is_retryable());
            record.output = Some(json!({ "uncertain": states[failed].uncertain }));
            self.record(lease, ctx, record).await?;
            states[failed].status = Some(StepStatus::Failed);
            states[failed].failed = true;
        }
        tracing::warn!(step = failed, action = %action, error = %failure, "saga step failed, compensating");
        let mut compensated = Vec::new();
        let mut compensation_failures = Vec::new();
        for index in (0..states.len()).rev() {
            let step_index = index as u32;
            let state = &states[index];
            let output = match state.status {
                Some(StepStatus::Compensated) => {
                    compensated.push(step_index);
                    continue;
                }
                Some(StepStatus::Succeeded | StepStatus::CompensationFailed) if !state.failed => {
                    Some(ActionOutput(state.output.clone().unwrap_or(Value::Null)))
                }
                Some(StepStatus::Failed | StepStatus::CompensationFailed) if state.failed && state.uncertain => None,
                // Started and never finished (its worker died): it may have had an effect.
                Some(StepStatus::Started) => None,
                // Never started, or failed cleanly: nothing to undo.
                _ => continue,
            };
            let name = action_name(actions, states, index).to_owned();
            let params = actions.get(index).filter(|a| a.action == name).map_or(&Value::Null, |a| &a.params);
            match self.compensate(ctx, &name, params, step_index, output.as_ref()).await {
                Ok(()) => {
                    self.record(lease, ctx, StepRecord::new(step_index, &name, StepStatus::Compensated)).await?;
                    states[index].status = Some(StepStatus::Compensated);
                    compensated.push(step_index);
                }
                Err(error) => {
                    let mut record = StepRecord::new(step_index, &name, StepStatus::CompensationFailed);
                    record.error = Some(error.clone());
                    self.record(lease, ctx, record).await?;
                    states[index].status = Some(StepStatus::CompensationFailed);
                    tracing::error!(step = index, action = %name, %error, "compensation failed");
                    compensation_failures.push(CompensationFailure { step_index, action: name, error });
                }
            }
        }
        Ok(SagaReport::Failed { step_index: failed as u32, action, failure, compensated, compensation_failures })
    }

    async fn execute(
        &self,
        ctx: &MessageContext,
        request: &ActionRequest,
        step_index: u32,
    ) -> Result<ActionOutput, StepFailure> {
        let executor =
            self.executors.get(&request.action).ok_or_else(|| StepFailure::UnknownAction(request.action.clone()))?;
        let breaker = self.breakers.get(executor.name());
        let action_ctx = ActionContext { message: ctx, params: &request.params, step_index };
        let timeout = self.action_timeout;
        let call = async {
            match tokio::time::timeout(timeout, executor.execute(&action_ctx)).await {
                Ok(result) => result.map_err(StepFailure::Action),
                Err(_) => Err(StepFailure::Timeout(timeout)),
            }
        };
        let span = tracing::info_span!("action", action = %request.action, step = step_index);
        let result =
            breaker.call(StepFailure::is_retryable, call).instrument(span).await.map_err(|error| match error {
                BreakerError::Open { circuit, retry_after } => StepFailure::CircuitOpen { circuit, retry_after },
                BreakerError::Inner(failure) => failure,
            });
        let status = match &result {
            Ok(_) => "succeeded",
            Err(StepFailure::CircuitOpen { .. }) => "rejected",
            Err(_) => "failed",
        };
        count_action(&request.action, status);
        result
    }

    /// Undoes one step: from its output, or by idempotency key when `output`
    /// is `None` (outcome unknown). Compensations bypass the breaker: undoing
    /// must be attempted even while the service is considered down.
    async fn compensate(
        &self,
        ctx: &MessageContext,
        action: &str,
        params: &Value,
        step_index: u32,
        output: Option<&ActionOutput>,
    ) -> Result<(), String> {
        let executor =
            self.executors.get(action).ok_or_else(|| format!("no executor registered for action `{action}`"))?;
        let action_ctx = ActionContext { message: ctx, params, step_index };
        let span = tracing::info_span!("compensation", action = %action, step = step_index);
        let undo = async {
            match output {
                Some(output) => executor.compensate(&action_ctx, output).await,
                None => executor.compensate_unknown(&action_ctx).await,
            }
        };
        let result = match tokio::time::timeout(self.action_timeout, undo).instrument(span).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("compensation timed out after {:?}", self.action_timeout)),
        };
        let status = if result.is_ok() { "succeeded" } else { "failed" };
        crate::metrics::metrics().compensations.with_label_values(&[crate::metrics::label(action), status]).inc();
        result
    }

    async fn record(&self, lease: &Lease, ctx: &MessageContext, record: StepRecord) -> Result<(), StoreError> {
        self.log.record_step(lease, ctx.run, &record).await
    }
}

/// Counts one execution of `action` in `action_executed_total`.
pub(crate) fn count_action(action: &str, status: &str) {
    crate::metrics::metrics().action_executed.with_label_values(&[crate::metrics::label(action), status]).inc();
}

/// The action of step `index`: as logged, else as planned.
fn action_name<'a>(actions: &'a [ActionRequest], states: &'a [StepState], index: usize) -> &'a str {
    states
        .get(index)
        .and_then(|s| s.action.as_deref())
        .or_else(|| actions.get(index).map(|a| a.action.as_str()))
        .unwrap_or_default()
}

fn recorded_failure(state: &StepState) -> StepFailure {
    let error = state.error.clone().unwrap_or_else(|| "failed in an earlier run".to_owned());
    if state.retryable.unwrap_or(true) {
        StepFailure::Action(ActionError::Retryable(error))
    } else {
        StepFailure::Action(ActionError::Permanent(error))
    }
}
