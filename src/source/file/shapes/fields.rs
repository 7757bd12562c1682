//! Lenient readers of single fields: `labels`, `steps`, `repository`, `owner`, `workflow`. Each
//! takes what it can from any JSON value and reads anything else as absent, so that a field of
//! an unexpected type does not stop the reading of its file.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::Key;

/// The visitor methods of a lenient field for the scalar JSON values it does not take: each
/// reads as `$absent`. `absent_otherwise!` takes strings as absent too; `absent_scalars!` leaves
/// `visit_str` to the field.
macro_rules! absent_scalars {
    ($value:ty, $absent:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<$value, E> {
            Ok($absent)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Ok($absent)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Ok($absent)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Ok($absent)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Ok($absent)
        }
    };
}

macro_rules! absent_otherwise {
    ($value:ty, $absent:expr) => {
        absent_scalars!($value, $absent);
        fn visit_str<E: de::Error>(self, _: &str) -> Result<$value, E> {
            Ok($absent)
        }
    };
}
use crate::model::{Person, RawStep, RepoRef, Scalar, ScalarVisitor};

/// `labels`: an array of strings; anything else reads as none.
pub(super) struct LabelsField(pub(super) Option<Vec<String>>);

impl<'de> de::Deserialize<'de> for LabelsField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LabelsField, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = LabelsField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of labels")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LabelsField, A::Error> {
                let mut labels = Vec::new();
                while let Some(label) = seq.next_element::<Scalar>()? {
                    labels.extend(label.into_string());
                }
                Ok(LabelsField(Some(labels)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelsField, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LabelsField(None))
            }
            absent_otherwise!(LabelsField, LabelsField(None));
        }
        deserializer.deserialize_any(LabelsVisitor)
    }
}

/// `steps`: the objects of an array, each read as a step; other values are skipped.
pub(super) struct StepsField(pub(super) Vec<RawStep>);

impl<'de> de::Deserialize<'de> for StepsField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StepsField, D::Error> {
        struct StepsVisitor;
        impl<'de> Visitor<'de> for StepsVisitor {
            type Value = StepsField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of steps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StepsField, A::Error> {
                let mut steps = Vec::new();
                while let Some(step) = seq.next_element::<MaybeStep>()? {
                    steps.extend(step.0);
                }
                Ok(StepsField(steps))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StepsField, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StepsField(Vec::new()))
            }
            absent_otherwise!(StepsField, StepsField(Vec::new()));
        }
        deserializer.deserialize_any(StepsVisitor)
    }
}

/// One element of `steps`: a step if it is an object.
struct MaybeStep(Option<RawStep>);

impl<'de> de::Deserialize<'de> for MaybeStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MaybeStep, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = MaybeStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a step object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeStep, A::Error> {
                let mut step = RawStep::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Name => &mut step.name,
                        Key::Status => &mut step.status,
                        Key::Conclusion => &mut step.conclusion,
                        Key::StartedAtSnake | Key::StartedAt => &mut step.started_at,
                        Key::CompletedAt | Key::CompletedAtCamel => &mut step.completed_at,
                        Key::Number => &mut step.number,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(MaybeStep(Some(step)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeStep, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStep(None))
            }
            absent_otherwise!(MaybeStep, MaybeStep(None));
        }
        deserializer.deserialize_any(StepVisitor)
    }
}

/// `repository`: an object (`full_name`, `name`, `owner.login`) or an `owner/name` string.
pub(super) struct RepoField(pub(super) Option<RepoRef>);

impl<'de> de::Deserialize<'de> for RepoField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RepoField, D::Error> {
        struct RepoVisitor;
        impl<'de> Visitor<'de> for RepoVisitor {
            type Value = RepoField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a repository object or name")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RepoField, E> {
                Ok(RepoField(Some(RepoRef { full_name: Some(value.to_owned()), ..RepoRef::default() })))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RepoField, A::Error> {
                let mut repo = RepoRef::default();
                while let Some(key) = map.next_key::<RepoKey>()? {
                    match key {
                        RepoKey::FullName => repo.full_name = map.next_value::<Scalar>()?.into_string(),
                        RepoKey::Name => repo.name = map.next_value::<Scalar>()?.into_string(),
                        RepoKey::Owner => repo.owner = map.next_value::<OwnerField>()?.0,
                        RepoKey::DefaultBranch => repo.default_branch = map.next_value::<Scalar>()?.into_string(),
                        RepoKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(RepoField(Some(repo)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RepoField, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| RepoField(None))
            }
            absent_scalars!(RepoField, RepoField(None));
        }
        deserializer.deserialize_any(RepoVisitor)
    }
}

enum RepoKey {
    FullName,
    Name,
    Owner,
    DefaultBranch,
    Other,
}

impl<'de> de::Deserialize<'de> for RepoKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RepoKey, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RepoKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<RepoKey, E> {
                Ok(match key {
                    "full_name" => RepoKey::FullName,
                    "name" => RepoKey::Name,
                    "owner" => RepoKey::Owner,
                    "default_branch" => RepoKey::DefaultBranch,
                    _ => RepoKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(V)
    }
}

/// `owner`: an object with `login`; anything else counts as absent.
struct OwnerField(Option<String>);

impl<'de> de::Deserialize<'de> for OwnerField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OwnerField, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OwnerField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an owner object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnerField, A::Error> {
                let mut login = None;
                while let Some(key) = map.next_key::<Scalar>()? {
                    if key == Scalar::Str("login".to_owned()) {
                        login = map.next_value::<Scalar>()?.into_string();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OwnerField(login))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OwnerField, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| OwnerField(None))
            }
            absent_scalars!(OwnerField, OwnerField(None));
            fn visit_str<E: de::Error>(self, value: &str) -> Result<OwnerField, E> {
                Ok(OwnerField(Some(value.to_owned())))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `workflow`: the event payload's workflow object (its `name`), or the context's string.
pub(super) struct WorkflowField(pub(super) Option<Scalar>);

impl<'de> de::Deserialize<'de> for WorkflowField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<WorkflowField, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WorkflowField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a workflow object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WorkflowField, A::Error> {
                let mut name = None;
                while let Some(key) = map.next_key::<RepoKey>()? {
                    if matches!(key, RepoKey::Name) {
                        name = Some(map.next_value::<Scalar>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(WorkflowField(name))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WorkflowField, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| WorkflowField(None))
            }
            absent_scalars!(WorkflowField, WorkflowField(None));
            // The github context's `workflow` is the workflow's name (or its path): not used,
            // since the event payload inside names the workflow properly.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `actor`, `triggering_actor`, `sender`: an object with `login` and `type`; anything else
/// counts as absent.
pub(super) struct PersonField(pub(super) Option<Person>);

impl<'de> de::Deserialize<'de> for PersonField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PersonField, D::Error> {
        struct PersonVisitor;
        impl<'de> Visitor<'de> for PersonVisitor {
            type Value = PersonField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PersonField, A::Error> {
                let mut person = Person::default();
                while let Some(key) = map.next_key::<SmallKey>()? {
                    match key {
                        SmallKey::Login => person.login = map.next_value::<Scalar>()?.into_string(),
                        SmallKey::Type => person.kind = map.next_value::<Scalar>()?.into_string(),
                        SmallKey::Number | SmallKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(PersonField(Some(person)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PersonField, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PersonField(None))
            }
            absent_otherwise!(PersonField, PersonField(None));
        }
        deserializer.deserialize_any(PersonVisitor)
    }
}

/// `pull_requests`: the `number` of the first element; anything else reads as none.
pub(super) struct PullRequestsField(pub(super) Option<u64>);

impl<'de> de::Deserialize<'de> for PullRequestsField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PullRequestsField, D::Error> {
        struct PullRequestsVisitor;
        impl<'de> Visitor<'de> for PullRequestsVisitor {
            type Value = PullRequestsField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of pull requests")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PullRequestsField, A::Error> {
                let mut first = None;
                while let Some(number) = seq.next_element::<PullRequestNumber>()? {
                    first = first.or(number.0);
                }
                Ok(PullRequestsField(first))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PullRequestsField, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(PullRequestsField(None))
            }
            absent_otherwise!(PullRequestsField, PullRequestsField(None));
        }
        deserializer.deserialize_any(PullRequestsVisitor)
    }
}

/// One element of `pull_requests`: its `number`, if it is an object that has one.
struct PullRequestNumber(Option<u64>);

impl<'de> de::Deserialize<'de> for PullRequestNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PullRequestNumber, D::Error> {
        struct NumberVisitor;
        impl<'de> Visitor<'de> for NumberVisitor {
            type Value = PullRequestNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pull request")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PullRequestNumber, A::Error> {
                let mut number = None;
                while let Some(key) = map.next_key::<SmallKey>()? {
                    if matches!(key, SmallKey::Number) {
                        if let Scalar::UInt(value) = map.next_value::<Scalar>()? {
                            number = Some(value);
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(PullRequestNumber(number))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PullRequestNumber, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PullRequestNumber(None))
            }
            absent_otherwise!(PullRequestNumber, PullRequestNumber(None));
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// The keys the person and pull request readers take, read without allocating.
enum SmallKey {
    Login,
    Type,
    Number,
    Other,
}

impl<'de> de::Deserialize<'de> for SmallKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SmallKey, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = SmallKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<SmallKey, E> {
                Ok(match key {
                    "login" => SmallKey::Login,
                    "type" => SmallKey::Type,
                    "number" => SmallKey::Number,
                    _ => SmallKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}
