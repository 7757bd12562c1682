//! The domain: the items the pipeline carries, raw (as read, with lenient [`Scalar`]s) and
//! validated, one file per entity. Pure: no I/O, no clock, no wire types.
//!
//! The pipeline handles [`Item`]s, keyed units of series: a workflow run today, a job or a step
//! tomorrow. Each item is tagged with its [`Entity`]; ledger keys of entities added after runs
//! carry their kind as a segment after the repository (`owner/repo:<kind>:...`), so one ledger
//! holds them all apart and the first ledgers' run keys stay valid.

mod job;
mod run;
mod scalar;

#[cfg(test)]
pub(crate) use job::testing as job_testing;
#[cfg(test)]
pub(crate) use run::testing;

pub use job::{validate_job, Job, JobContext, RawJob, RawStep, RunnerErrors, Step};
pub use run::{run_key, split_full_name, validate_run, Person, RawRun, RepoRef, Run, RunExtras, GH_JSON_FIELDS};
pub use scalar::Scalar;
pub(crate) use scalar::ScalarVisitor;

/// The kinds of item; each has its metric family (`metrics::family`) and its key format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    /// One attempt of one workflow run. Key: `owner/repo:run_id:attempt` (the format of the
    /// first ledgers, kept so that they stay valid).
    WorkflowRun,
    /// One job. Key: `owner/repo:job:<job_id>` (a re-run's jobs get new ids).
    Job,
    /// One step of a job. Key: `owner/repo:job:<job_id>:step:<number>`.
    Step,
}

impl Entity {
    /// Every entity, in the order the README's metrics table lists them.
    pub const ALL: [Entity; 3] = [Entity::WorkflowRun, Entity::Job, Entity::Step];

    /// The entity's segment of metric names (`<prefix>.<name>.total`), as int128's action names it.
    pub fn name(self) -> &'static str {
        match self {
            Entity::WorkflowRun => "workflow_run",
            Entity::Job => "job",
            Entity::Step => "step",
        }
    }
}

/// A rate limit as the service's last answer stated it (GitHub's `x-ratelimit-*` headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub used: u64,
    /// Unix seconds.
    pub reset: i64,
    /// Which limit (`core`, `search`...).
    pub resource: String,
}

/// A validated item on its way to Datadog.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Run(Run),
    /// Boxed, as steps are: a run, the common item, stays the size of the enum.
    Job(Box<Job>),
    Step(Box<Step>),
}

impl Item {
    pub fn entity(&self) -> Entity {
        match self {
            Item::Run(_) => Entity::WorkflowRun,
            Item::Job(_) => Entity::Job,
            Item::Step(_) => Entity::Step,
        }
    }

    /// The ledger key.
    pub fn key(&self) -> &str {
        match self {
            Item::Run(run) => run.key(),
            Item::Job(job) => &job.key,
            Item::Step(step) => &step.key,
        }
    }

    /// Completion time, unix seconds: the timestamp of its points unless stamped.
    pub fn completed_at(&self) -> i64 {
        match self {
            Item::Run(run) => run.completed_at,
            Item::Job(job) => job.completed_at,
            Item::Step(step) => step.completed_at,
        }
    }

    pub fn conclusion(&self) -> &str {
        match self {
            Item::Run(run) => run.conclusion(),
            Item::Job(job) => &job.conclusion,
            Item::Step(step) => &step.conclusion,
        }
    }
}

/// What validation makes of one raw record.
#[derive(Clone, Debug, PartialEq)]
pub enum Validated {
    Completed(Item),
    /// Queued, in progress, waiting...: not sent, not marked, so a later pass sends it.
    NotCompleted {
        key: String,
        status: String,
    },
    /// This record cannot be used; the others can.
    Invalid {
        origin: String,
        reason: String,
    },
    /// The invocation itself is wrong for this input (a gh row without `databaseId`, rows with no
    /// repository and no `--repo`): every record would fail the same way, so reading stops.
    Fatal {
        origin: String,
        reason: String,
    },
}
