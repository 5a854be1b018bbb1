//! The transfer saga as a state machine: its states, steps, events and the payment
//! service's answers as enums stored as text and parsed strictly, and the transition
//! table as one pure function ([`next`]) that the coordinator only executes.

pub use crate::payment::OpStatus;
use crate::text_enum::text_enum;
#[cfg(test)]
use crate::text_enum::UnknownVariant;

text_enum! {
    /// A saga's state as clients see it (`GET /transfers/{id}` `status`).
    SagaState, "saga state" {
        /// Still running (or parked until payment answers again).
        Pending = "PENDING",
        /// Debited and credited.
        Completed = "COMPLETED",
        /// Debited, credit failed, debit refunded.
        Compensated = "COMPENSATED",
        /// Nothing moved (debit refused, or voided before it landed).
        Failed = "FAILED",
    }
}

text_enum! {
    /// The step a saga still has to do.
    Step, "saga step" {
        /// Debit the source account.
        Debit = "DEBIT",
        /// Credit the destination account.
        Credit = "CREDIT",
        /// Make sure the credit can never land (or learn that it did).
        CompensateVoid = "COMPENSATE_VOID",
        /// Give the debit back (or void it if it never landed).
        CompensateRefund = "COMPENSATE_REFUND",
        /// Tell the users.
        Notify = "NOTIFY",
        /// Nothing left to do.
        Done = "DONE",
    }
}

text_enum! {
    /// The outbox event a transition publishes.
    Event, "saga event" {
        /// The source account was debited.
        TransferDebited = "TransferDebited",
        /// The transfer is complete.
        TransferCompleted = "TransferCompleted",
        /// The debit was given back.
        TransferCompensated = "TransferCompensated",
        /// Nothing moved.
        TransferFailed = "TransferFailed",
    }
}

impl Step {
    /// The step's name in metric labels (`saga_debit`, `compensate_void`).
    pub fn label(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

impl SagaState {
    /// The event that tells the users how a finished saga ended.
    pub fn outcome_event(self) -> Event {
        match self {
            SagaState::Completed => Event::TransferCompleted,
            SagaState::Compensated => Event::TransferCompensated,
            SagaState::Pending | SagaState::Failed => Event::TransferFailed,
        }
    }
}

/// The reason text with which payment says a refund found its debit already given back.
pub const ALREADY_REFUNDED: &str = "already_refunded";

/// What the current step's call gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Payment answered (2xx) with an operation result.
    Op {
        /// The operation's final status.
        status: OpStatus,
        /// Why it was rejected or a no-op.
        reason: Option<&'a str>,
        /// The account owner, when payment knows it.
        owner: Option<&'a str>,
    },
    /// A 4xx other than 401/429: the request itself is refused, no retry helps.
    Refused(&'a str),
    /// Timeout, connection error, 5xx, 401, 429: the outcome is unknown.
    Transient(&'a str),
    /// The notification service took the notifications.
    Delivered,
    /// The notification service did not; `last_try` when the saga's notify budget is spent.
    Undelivered {
        /// The failure.
        error: &'a str,
        /// No notify attempt is left.
        last_try: bool,
    },
}

/// What the coordinator does after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Leave the current step (one write transaction, guarded by that step).
    Move(Move<'a>),
    /// Stay on the step, count the try, and let recovery run it again later.
    Park {
        /// The failure to record.
        error: &'a str,
    },
}

/// A transition out of the current step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<'a> {
    /// The step to do next.
    pub step: Step,
    /// The new state, `None` to keep the current one.
    pub state: Option<SagaState>,
    /// The source account's owner learnt from this reply.
    pub from_user: Option<&'a str>,
    /// The destination account's owner learnt from this reply.
    pub to_user: Option<&'a str>,
    /// The failure to record as `last_error`.
    pub error: Option<String>,
    /// The outbox event to publish with the transition.
    pub event: Option<Event>,
    /// The outcome written to the saga log.
    pub note: &'static str,
}

impl Move<'_> {
    fn to(step: Step, note: &'static str) -> Self {
        Move {
            step,
            state: None,
            from_user: None,
            to_user: None,
            error: None,
            event: None,
            note,
        }
    }
}

/// A reply that the step cannot receive (a coordinator bug), or a finished saga.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga step {step} cannot take the reply {reply}")]
pub struct UnexpectedReply {
    /// The current step.
    pub step: Step,
    /// The reply's kind.
    pub reply: &'static str,
}

impl Reply<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Reply::Op { .. } => "op",
            Reply::Refused(_) => "refused",
            Reply::Transient(_) => "transient",
            Reply::Delivered => "delivered",
            Reply::Undelivered { .. } => "undelivered",
        }
    }
}

/// The saga's transition table: from the current step and the reply of its call, what
/// happens next. Money is conserved because a debit of unknown outcome is compensated,
/// the credit is voided before the debit is refunded (a credit found applied completes the
/// transfer instead), and a refund of a debit that never landed voids it.
pub fn next(step: Step, reply: Reply<'_>) -> Result<Decision<'_>, UnexpectedReply> {
    use OpStatus::*;
    use Reply::*;
    let unexpected = || UnexpectedReply {
        step,
        reply: reply.kind(),
    };
    let m = match (step, reply) {
        (
            Step::Debit,
            Op {
                status: Applied,
                owner,
                ..
            },
        ) => Move {
            from_user: owner,
            event: Some(Event::TransferDebited),
            ..Move::to(Step::Credit, "debited")
        },
        (
            Step::Debit,
            Op {
                status: Rejected,
                reason,
                owner,
            },
        ) => Move {
            state: Some(SagaState::Failed),
            from_user: owner,
            error: Some(format!("debit rejected: {}", reason.unwrap_or("rejected"))),
            event: Some(Event::TransferFailed),
            ..Move::to(Step::Notify, "debit_rejected")
        },
        // VOIDED/REFUNDED: an earlier run already compensated; finish the compensation.
        (Step::Debit, Op { status, .. }) => Move {
            error: Some(format!("debit answered {status}")),
            ..Move::to(Step::CompensateVoid, "debit_voided")
        },
        (Step::Debit, Refused(e)) => Move {
            state: Some(SagaState::Failed),
            error: Some(e.to_string()),
            event: Some(Event::TransferFailed),
            ..Move::to(Step::Notify, "debit_refused")
        },
        // The debit's outcome is unknown: compensate (void or refund it).
        (Step::Debit, Transient(e)) => Move {
            error: Some(e.to_string()),
            ..Move::to(Step::CompensateVoid, "debit_unreachable")
        },
        (
            Step::Credit,
            Op {
                status: Applied,
                owner,
                ..
            },
        ) => completed(owner, "credited"),
        (Step::Credit, Op { status, reason, .. }) => Move {
            error: Some(format!(
                "credit answered {status} ({})",
                reason.unwrap_or_default()
            )),
            ..Move::to(Step::CompensateVoid, "credit_rejected")
        },
        (Step::Credit, Refused(e) | Transient(e)) => Move {
            error: Some(e.to_string()),
            ..Move::to(Step::CompensateVoid, "credit_failed")
        },
        // The credit did land (its answer was lost): the transfer happened.
        (
            Step::CompensateVoid,
            Op {
                status: Applied,
                owner,
                ..
            },
        ) => completed(owner, "credit_found_applied"),
        (Step::CompensateVoid, Op { .. }) => Move::to(Step::CompensateRefund, "credit_voided"),
        (Step::CompensateRefund, Op { status, reason, .. })
            if status == Applied || reason == Some(ALREADY_REFUNDED) =>
        {
            Move {
                state: Some(SagaState::Compensated),
                event: Some(Event::TransferCompensated),
                ..Move::to(Step::Notify, "refunded")
            }
        }
        // The debit never landed and is now voided: nothing moved.
        (Step::CompensateRefund, Op { .. }) => Move {
            state: Some(SagaState::Failed),
            event: Some(Event::TransferFailed),
            ..Move::to(Step::Notify, "debit_voided")
        },
        (Step::CompensateVoid | Step::CompensateRefund, Refused(error) | Transient(error)) => {
            return Ok(Decision::Park { error });
        }
        (Step::Notify, Delivered) => Move::to(Step::Done, "notified"),
        // Money is settled; the outbox event still reaches notification consumers.
        (
            Step::Notify,
            Undelivered {
                error,
                last_try: true,
            },
        ) => Move {
            error: Some(format!("notify abandoned: {error}")),
            ..Move::to(Step::Done, "notify_abandoned")
        },
        (
            Step::Notify,
            Undelivered {
                error,
                last_try: false,
            },
        ) => {
            return Ok(Decision::Park { error });
        }
        (
            Step::Debit | Step::Credit | Step::CompensateVoid | Step::CompensateRefund,
            Delivered | Undelivered { .. },
        )
        | (Step::Notify, Op { .. } | Refused(_) | Transient(_))
        | (Step::Done, _) => return Err(unexpected()),
    };
    Ok(Decision::Move(m))
}

fn completed<'a>(owner: Option<&'a str>, note: &'static str) -> Move<'a> {
    Move {
        state: Some(SagaState::Completed),
        to_user: owner,
        event: Some(Event::TransferCompleted),
        ..Move::to(Step::Notify, note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(status: OpStatus) -> Reply<'static> {
        Reply::Op {
            status,
            reason: None,
            owner: Some("u1"),
        }
    }

    fn moved(d: Result<Decision<'_>, UnexpectedReply>) -> Move<'_> {
        match d {
            Ok(Decision::Move(m)) => m,
            other => panic!("expected a move, got {other:?}"),
        }
    }

    /// (step, state, event, note) of a move, the row's identity in the table.
    fn row(m: &Move<'_>) -> (Step, Option<SagaState>, Option<Event>, &'static str) {
        (m.step, m.state, m.event, m.note)
    }

    #[test]
    fn stored_text_round_trips_and_unknown_text_is_an_error() {
        for s in SagaState::ALL {
            assert_eq!(s.as_str().parse::<SagaState>(), Ok(*s));
        }
        for s in Step::ALL {
            assert_eq!(s.as_str().parse::<Step>(), Ok(*s));
        }
        for s in OpStatus::ALL {
            assert_eq!(s.as_str().parse::<OpStatus>(), Ok(*s));
        }
        for s in Event::ALL {
            assert_eq!(s.as_str().parse::<Event>(), Ok(*s));
        }
        assert_eq!(
            "pending".parse::<SagaState>(),
            Err(UnknownVariant {
                kind: "saga state",
                value: "pending".into()
            })
        );
        assert!("SETTLED".parse::<SagaState>().is_err());
        assert!("REVERSE".parse::<Step>().is_err());
        assert!("".parse::<OpStatus>().is_err());
        assert_eq!(
            serde_json::to_value(SagaState::Compensated).unwrap(),
            "COMPENSATED"
        );
        assert!(serde_json::from_value::<OpStatus>("applied".into()).is_err());
    }

    #[test]
    fn debit_applied_goes_to_credit_and_learns_the_payer() {
        let m = moved(next(Step::Debit, op(OpStatus::Applied)));
        assert_eq!(
            row(&m),
            (Step::Credit, None, Some(Event::TransferDebited), "debited")
        );
        assert_eq!((m.from_user, m.to_user, m.error), (Some("u1"), None, None));
    }

    #[test]
    fn debit_rejected_fails_the_saga_with_the_reason() {
        let reply = Reply::Op {
            status: OpStatus::Rejected,
            reason: Some("insufficient_funds"),
            owner: Some("u1"),
        };
        let m = moved(next(Step::Debit, reply));
        assert_eq!(
            row(&m),
            (
                Step::Notify,
                Some(SagaState::Failed),
                Some(Event::TransferFailed),
                "debit_rejected"
            )
        );
        assert_eq!(m.from_user, Some("u1"));
        assert_eq!(
            m.error.as_deref(),
            Some("debit rejected: insufficient_funds")
        );
    }

    #[test]
    fn debit_found_voided_or_refunded_finishes_the_compensation() {
        for status in [OpStatus::Voided, OpStatus::Refunded, OpStatus::Noop] {
            let m = moved(next(Step::Debit, op(status)));
            assert_eq!(
                row(&m),
                (Step::CompensateVoid, None, None, "debit_voided"),
                "{status}"
            );
            assert_eq!(m.error, Some(format!("debit answered {status}")));
        }
    }

    #[test]
    fn debit_refused_fails_the_saga() {
        let m = moved(next(Step::Debit, Reply::Refused("400 bad account")));
        assert_eq!(
            row(&m),
            (
                Step::Notify,
                Some(SagaState::Failed),
                Some(Event::TransferFailed),
                "debit_refused"
            )
        );
        assert_eq!(m.error.as_deref(), Some("400 bad account"));
    }

    #[test]
    fn debit_of_unknown_outcome_is_compensated() {
        let m = moved(next(Step::Debit, Reply::Transient("timeout")));
        assert_eq!(
            row(&m),
            (Step::CompensateVoid, None, None, "debit_unreachable")
        );
        assert_eq!(m.error.as_deref(), Some("timeout"));
    }

    #[test]
    fn credit_applied_completes_and_learns_the_payee() {
        let m = moved(next(Step::Credit, op(OpStatus::Applied)));
        assert_eq!(
            row(&m),
            (
                Step::Notify,
                Some(SagaState::Completed),
                Some(Event::TransferCompleted),
                "credited"
            )
        );
        assert_eq!((m.from_user, m.to_user), (None, Some("u1")));
    }

    #[test]
    fn credit_answered_otherwise_is_voided() {
        let reply = Reply::Op {
            status: OpStatus::Rejected,
            reason: Some("unknown_account"),
            owner: None,
        };
        let m = moved(next(Step::Credit, reply));
        assert_eq!(
            row(&m),
            (Step::CompensateVoid, None, None, "credit_rejected")
        );
        assert_eq!(
            m.error.as_deref(),
            Some("credit answered REJECTED (unknown_account)")
        );
    }

    #[test]
    fn credit_refused_or_unreachable_is_voided() {
        for reply in [Reply::Refused("404"), Reply::Transient("reset")] {
            let m = moved(next(Step::Credit, reply));
            assert_eq!(row(&m), (Step::CompensateVoid, None, None, "credit_failed"));
            assert!(m.error.is_some());
        }
    }

    #[test]
    fn void_finding_the_credit_applied_completes_the_transfer() {
        let m = moved(next(Step::CompensateVoid, op(OpStatus::Applied)));
        assert_eq!(
            row(&m),
            (
                Step::Notify,
                Some(SagaState::Completed),
                Some(Event::TransferCompleted),
                "credit_found_applied"
            )
        );
        assert_eq!(m.to_user, Some("u1"));
    }

    #[test]
    fn void_done_goes_to_refund() {
        for status in [OpStatus::Voided, OpStatus::Rejected, OpStatus::Refunded] {
            let m = moved(next(Step::CompensateVoid, op(status)));
            assert_eq!(
                row(&m),
                (Step::CompensateRefund, None, None, "credit_voided")
            );
        }
    }

    #[test]
    fn void_unanswered_parks() {
        for reply in [Reply::Refused("400"), Reply::Transient("timeout")] {
            assert!(matches!(
                next(Step::CompensateVoid, reply),
                Ok(Decision::Park { .. })
            ));
        }
    }

    #[test]
    fn refund_applied_or_already_refunded_compensates() {
        let already = Reply::Op {
            status: OpStatus::Noop,
            reason: Some(ALREADY_REFUNDED),
            owner: None,
        };
        for reply in [op(OpStatus::Applied), already] {
            let m = moved(next(Step::CompensateRefund, reply));
            assert_eq!(
                row(&m),
                (
                    Step::Notify,
                    Some(SagaState::Compensated),
                    Some(Event::TransferCompensated),
                    "refunded"
                )
            );
        }
    }

    #[test]
    fn refund_of_a_debit_that_never_landed_fails_the_saga() {
        let reply = Reply::Op {
            status: OpStatus::Noop,
            reason: Some("debit_not_applied"),
            owner: None,
        };
        let m = moved(next(Step::CompensateRefund, reply));
        assert_eq!(
            row(&m),
            (
                Step::Notify,
                Some(SagaState::Failed),
                Some(Event::TransferFailed),
                "debit_voided"
            )
        );
    }

    #[test]
    fn refund_unanswered_parks() {
        assert_eq!(
            next(Step::CompensateRefund, Reply::Transient("503")),
            Ok(Decision::Park { error: "503" })
        );
    }

    #[test]
    fn notify_delivered_is_done() {
        let m = moved(next(Step::Notify, Reply::Delivered));
        assert_eq!(row(&m), (Step::Done, None, None, "notified"));
    }

    #[test]
    fn notify_undelivered_parks_until_the_last_try_then_gives_up() {
        assert_eq!(
            next(
                Step::Notify,
                Reply::Undelivered {
                    error: "503",
                    last_try: false
                }
            ),
            Ok(Decision::Park { error: "503" })
        );
        let m = moved(next(
            Step::Notify,
            Reply::Undelivered {
                error: "503",
                last_try: true,
            },
        ));
        assert_eq!(row(&m), (Step::Done, None, None, "notify_abandoned"));
        assert_eq!(m.error.as_deref(), Some("notify abandoned: 503"));
    }

    #[test]
    fn a_reply_the_step_cannot_take_is_an_error() {
        assert_eq!(
            next(Step::Done, Reply::Delivered),
            Err(UnexpectedReply {
                step: Step::Done,
                reply: "delivered"
            })
        );
        assert!(next(Step::Debit, Reply::Delivered).is_err());
        assert!(next(Step::Notify, op(OpStatus::Applied)).is_err());
    }

    #[test]
    fn a_finished_saga_tells_its_outcome() {
        assert_eq!(
            SagaState::Completed.outcome_event(),
            Event::TransferCompleted
        );
        assert_eq!(
            SagaState::Compensated.outcome_event(),
            Event::TransferCompensated
        );
        assert_eq!(SagaState::Failed.outcome_event(), Event::TransferFailed);
    }

    /// A payment service with the real one's rules (services/src/payment.rs): one result
    /// per op id, a void tombstone that answers any later request under its id, a refund
    /// that voids a debit that never landed.
    #[derive(Debug, Default)]
    struct Payment {
        from: i64,
        to: i64,
        amount: i64,
        to_exists: bool,
        /// op id -> (kind, status, reason)
        ops:
            std::collections::HashMap<&'static str, (&'static str, OpStatus, Option<&'static str>)>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Call {
        Debit,
        Credit,
        Void,
        Refund,
    }

    impl Payment {
        fn exec(&mut self, call: Call) -> (OpStatus, Option<&'static str>) {
            use OpStatus::*;
            let id = match call {
                Call::Debit => "debit",
                Call::Credit | Call::Void => "credit",
                Call::Refund => "refund",
            };
            if let Some((_, status, reason)) = self.ops.get(id) {
                return (*status, *reason);
            }
            let (kind, status, reason) = match call {
                Call::Debit if self.from >= self.amount => {
                    self.from -= self.amount;
                    ("debit", Applied, None)
                }
                Call::Debit => ("debit", Rejected, Some("insufficient_funds")),
                Call::Credit if self.to_exists => {
                    self.to += self.amount;
                    ("credit", Applied, None)
                }
                Call::Credit => ("credit", Rejected, Some("unknown_account")),
                Call::Void => ("void", Voided, Some("voided")),
                Call::Refund => match self.ops.get("debit").copied() {
                    None => {
                        self.ops
                            .insert("debit", ("void", Voided, Some("voided_by_refund")));
                        ("refund", Noop, Some("debit_not_applied"))
                    }
                    Some(("debit", Applied, _)) => {
                        self.from += self.amount;
                        self.ops.insert("debit", ("debit", Refunded, None));
                        ("refund", Applied, None)
                    }
                    Some((_, Refunded, _)) => ("refund", Noop, Some(ALREADY_REFUNDED)),
                    Some(_) => ("refund", Noop, Some("debit_not_applied")),
                },
            };
            self.ops.insert(id, (kind, status, reason));
            (status, reason)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any interleaving of lost requests, lost answers, requests that arrive late
        /// (after the saga moved on), 4xx refusals and notification failures: the saga ends,
        /// and money is neither created nor lost: COMPLETED moved exactly the amount,
        /// COMPENSATED and FAILED moved nothing, and no moment holds more money than the start.
        #[test]
        fn no_path_creates_or_loses_money(
            from in 0i64..200,
            to in 0i64..100,
            amount in 1i64..150,
            to_exists in proptest::bool::weighted(0.8),
            refusing in proptest::option::of(0u8..2),
            // Per step: how the network treats the call (0-4 deliver, 5 lost before,
            // 6 answer lost, 7 delayed, 8 notify fails) and whether a delayed call lands.
            script in proptest::collection::vec((0u8..9, proptest::bool::ANY), 0..40),
        ) {
            use proptest::prop_assert;
            let mut pay = Payment { from, to, amount, to_exists, ..Payment::default() };
            let total = from + to;
            let refused = |c: Call| match refusing {
                Some(0) => c == Call::Debit,
                Some(_) => c == Call::Credit,
                None => false,
            };
            let mut delayed: Vec<Call> = Vec::new();
            let mut step = Step::Debit;
            let mut state = SagaState::Pending;
            let mut notify_tries = 0;
            for i in 0..200 {
                // After the script, the network is reliable: the saga must end.
                let (net, land) = script.get(i).copied().unwrap_or((0, true));
                if land {
                    if let Some(c) = delayed.pop() {
                        if !refused(c) {
                            pay.exec(c);
                        }
                    }
                }
                prop_assert!(pay.from + pay.to <= total, "money created mid-saga");
                let call = match step {
                    Step::Debit => Call::Debit,
                    Step::Credit => Call::Credit,
                    Step::CompensateVoid => Call::Void,
                    Step::CompensateRefund => Call::Refund,
                    Step::Notify => {
                        notify_tries += 1;
                        let reply = if net == 8 {
                            Reply::Undelivered { error: "down", last_try: notify_tries >= 3 }
                        } else {
                            Reply::Delivered
                        };
                        if let Decision::Move(m) = next(step, reply).map_err(|e| {
                            proptest::test_runner::TestCaseError::fail(e.to_string())
                        })? {
                            step = m.step;
                        }
                        continue;
                    }
                    Step::Done => break,
                };
                let reply = match net {
                    5 => Reply::Transient("connect refused"),
                    7 => {
                        delayed.push(call);
                        Reply::Transient("timeout")
                    }
                    _ if refused(call) => Reply::Refused("400 bad request"),
                    6 => {
                        pay.exec(call);
                        Reply::Transient("timeout")
                    }
                    _ => {
                        let (status, reason) = pay.exec(call);
                        Reply::Op { status, reason, owner: Some("u") }
                    }
                };
                match next(step, reply) {
                    Ok(Decision::Move(m)) => {
                        step = m.step;
                        if let Some(s) = m.state {
                            prop_assert!(state == SagaState::Pending, "a finished saga changed state");
                            state = s;
                        }
                    }
                    Ok(Decision::Park { .. }) => {}
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
            prop_assert!(step == Step::Done, "the saga did not end: {:?}", step);
            // Late requests still in the network land after the saga ended.
            for c in delayed.drain(..).rev() {
                if !refused(c) {
                    pay.exec(c);
                }
            }
            prop_assert!(pay.from + pay.to == total, "money not conserved: {:?}", pay);
            match state {
                SagaState::Completed => {
                    prop_assert!(pay.from == from - amount && pay.to == to + amount, "{:?}", pay)
                }
                SagaState::Compensated | SagaState::Failed => {
                    prop_assert!(pay.from == from && pay.to == to, "{:?} ended {:?}", pay, state)
                }
                SagaState::Pending => prop_assert!(false, "ended pending"),
            }
        }
    }
}
