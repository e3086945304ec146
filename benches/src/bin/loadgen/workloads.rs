//! The phases, one module each. Every phase takes its buses from the [`Run`](crate::harness::Run),
//! deletes its keys when done and records its figures in the [`Report`](crate::report::Report).

pub(crate) mod big;
pub(crate) mod blocking;
pub(crate) mod drain;
pub(crate) mod fanout;
pub(crate) mod latency;
pub(crate) mod procs;
pub(crate) mod publish;
pub(crate) mod rb;
pub(crate) mod retry;
