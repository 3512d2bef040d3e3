//! One trait for every output of anomaly events. `memdrift run`, `replay` and `demo` hold a list of them and
//! hand each batch to all; adding an output is one type and one line where the list is built.

use std::io;

use crate::anomaly::Anomaly;

/// Where anomaly events go. Called on the engine thread: an implementation must not wait on the network
/// (queue instead) and should be quick.
pub trait Output: Send {
    /// The output's name in logs and errors.
    fn name(&self) -> &'static str;

    /// Takes one batch of events, in order. An error is logged by the caller and the next batch still comes.
    fn write(&mut self, events: &[Anomaly]) -> io::Result<()>;
}
