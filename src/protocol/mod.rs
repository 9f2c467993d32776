//! Pipeline step 1 (client → **framing** → classify → route → pool → server): PostgreSQL wire
//! framing. Frames are tag + length + body; the proxy reads only the headers routing needs and
//! forwards everything else as raw bytes.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;
pub mod tag;

pub use frame::{decode_frame, Frame, FrameError};
pub use tag::{Front, TxnStatus};
