//! Cron schedules: registration (the expression parsed once, there) and each occurrence,
//! which starts the workflow `<name>@<due ms>` and arms the next one.

use super::{Apply, Schedule, SchedulerState, TimerTarget, check_len, check_name, cron};
use crate::command::{Answer, Due, Rejection};
use crate::limits::{NAME_MAX_BYTES, PAYLOAD_MAX_BYTES};

/// Longest `@<due ms>` suffix of a scheduled workflow's id.
const SCHEDULE_SUFFIX_MAX: usize = 21;

impl SchedulerState {
    pub(super) fn register_schedule(
        &mut self,
        apply: &mut Apply<'_>,
        name: String,
        expression: String,
        kind: String,
        input: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_name("schedule name", &name)?;
        // Its workflows are named `<name>@<due ms>`: room for the suffix.
        check_len(
            "schedule name",
            name.len(),
            NAME_MAX_BYTES - SCHEDULE_SUFFIX_MAX,
        )?;
        check_len("cron expression", expression.len(), NAME_MAX_BYTES)?;
        check_len("workflow input", input.len(), PAYLOAD_MAX_BYTES)?;
        if name.contains('/') {
            return Err(Rejection::Invalid {
                what: "schedule name".to_owned(),
                reason: "'/' is reserved for child workflows' ids".to_owned(),
            });
        }
        let invalid = |reason: String| Rejection::InvalidCron {
            cron: expression.clone(),
            reason,
        };
        let spec = cron::parse(&expression).map_err(invalid)?;
        self.version_of(&kind)?;
        let next = cron::next_after(&spec, apply.stamp_ms)
            .ok_or_else(|| invalid("it never occurs".to_owned()))?;
        if let Some(old) = self.schedules.remove(&name) {
            self.remove_timer(apply, old.timer);
        }
        let timer = self.add_timer(
            apply,
            Due::At { at_ms: next },
            TimerTarget::Schedule { name: name.clone() },
        );
        self.schedules.insert(
            name,
            Schedule {
                cron: expression,
                spec,
                kind,
                input,
                timer,
            },
        );
        Ok(Answer::Done)
    }

    pub(super) fn fire_schedule(&mut self, apply: &mut Apply<'_>, name: &str, due_ms: u64) {
        let schedule = self
            .schedules
            .get(name)
            .expect("a schedule timer's schedule exists");
        let (spec, kind, input) = (schedule.spec, schedule.kind.clone(), schedule.input.clone());
        let id = format!("{name}@{due_ms}");
        // An occurrence whose id is taken (an earlier start of it, not expired) starts
        // nothing new; the names were checked at registration and kinds stay declared.
        let _ = self.start(apply, id, kind, input);
        // The spec parsed at registration: firing never parses.
        if let Some(next) = cron::next_after(&spec, due_ms.max(apply.stamp_ms)) {
            let timer = self.add_timer(
                apply,
                Due::At { at_ms: next },
                TimerTarget::Schedule {
                    name: name.to_owned(),
                },
            );
            self.schedules.get_mut(name).expect("exists").timer = timer;
        } else {
            self.schedules.remove(name);
        }
    }
}
