//! Named timers: `ScheduleTimer`, idempotent by name while the timer is pending and while
//! its fire record is kept.

use super::{Apply, SchedulerState, TimerTarget, check_len, check_name};
use crate::command::{Answer, Due, Rejection};
use crate::limits::PAYLOAD_MAX_BYTES;

impl SchedulerState {
    pub(super) fn schedule_timer(
        &mut self,
        apply: &mut Apply<'_>,
        name: String,
        due: Due,
        payload: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_name("timer name", &name)?;
        check_len("timer payload", payload.len(), PAYLOAD_MAX_BYTES)?;
        if let Some(&id) = self.named.get(&name) {
            let due_ms = self
                .timers
                .get(id)
                .expect("named timers are pending")
                .due_ms;
            return Ok(Answer::Timer {
                id,
                due_ms,
                created: false,
            });
        }
        if let Some(record) = self.fired.get(&name) {
            return Ok(Answer::Timer {
                id: record.id,
                due_ms: record.due_ms,
                created: false,
            });
        }
        let id = self.add_timer(
            apply,
            due,
            TimerTarget::Named {
                name: name.clone(),
                payload,
            },
        );
        self.named.insert(name, id);
        let due_ms = self.timers.get(id).expect("just added").due_ms;
        Ok(Answer::Timer {
            id,
            due_ms,
            created: true,
        })
    }
}
