//! One acknowledgement for several stores: an MQTT publish with
//! persistence is answered once the topic driver, the retained record and
//! each persistent session's copy have all said so ([`crate::persist`]).

use std::sync::Arc;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::Receipt;
use parking_lot::Mutex;

/// Waits for several outcomes and completes `done` with the main one's
/// receipt once all succeeded, or with the first failure.
pub(crate) struct Join {
    state: Mutex<JoinState>,
}

struct JoinState {
    left: usize,
    receipt: Option<Receipt>,
    failure: Option<Failure>,
    done: Option<Completion<Receipt>>,
}

impl Join {
    /// A join of `parts` outcomes for `done`.
    pub(crate) fn new(parts: usize, done: Completion<Receipt>) -> Arc<Join> {
        Arc::new(Join {
            state: Mutex::new(JoinState {
                left: parts,
                receipt: None,
                failure: None,
                done: Some(done),
            }),
        })
    }

    /// One part: `main` carries the receipt; a side part that fails with
    /// `Full` is `tolerated` (a session's queue at its limit: dropped and
    /// counted by the caller) rather than failing the whole.
    pub(crate) fn part(self: &Arc<Self>, main: bool, tolerate_full: bool) -> Completion<Receipt> {
        let me = self.clone();
        Completion::new(move |r: Result<Receipt, Failure>| {
            let mut st = me.state.lock();
            match r {
                Ok(receipt) if main => st.receipt = Some(receipt),
                Ok(_) => {}
                Err(f) if tolerate_full && f.kind == FailureKind::Full => {}
                Err(f) => {
                    st.failure.get_or_insert(f);
                }
            }
            st.left -= 1;
            if st.left > 0 {
                return;
            }
            let done = st.done.take();
            let outcome = match (st.failure.take(), st.receipt) {
                (Some(f), _) => Err(f),
                (None, Some(r)) => Ok(r),
                (None, None) => Err(Failure::new(FailureKind::Dropped, "no receipt")),
            };
            drop(st);
            if let Some(done) = done {
                done.complete(outcome);
            }
        })
    }
}
