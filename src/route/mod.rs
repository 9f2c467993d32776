//! Pipeline step 3 (client → framing → classify → **route** → pool → server): picks the target
//! for a statement or transaction from its classification, the phase and the session state.
//! Pure: no I/O, no globals, no metrics.

mod target;

pub use target::*;
