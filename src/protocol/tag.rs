//! Pipeline step 1 (client → **framing** → …): the message types by name, so the session
//! matches on `Front::Bind` rather than on a byte whose meaning depends on the direction
//! (`b'S'` is Sync from a client and ParameterStatus from a server).

/// Client (frontend) message types the session handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Flush,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
    Terminate,
    Other(u8),
}

impl Front {
    pub fn of(tag: u8) -> Self {
        match tag {
            b'Q' => Self::Query,
            b'P' => Self::Parse,
            b'B' => Self::Bind,
            b'D' => Self::Describe,
            b'E' => Self::Execute,
            b'C' => Self::Close,
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'F' => Self::FunctionCall,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail,
            b'X' => Self::Terminate,
            other => Self::Other(other),
        }
    }

    /// COPY sub-protocol messages: they belong to a request already routed.
    pub fn is_copy(self) -> bool {
        matches!(self, Self::CopyData | Self::CopyDone | Self::CopyFail)
    }

    /// Messages that end a request on their own (a Query answers with ReadyForQuery; so does
    /// a Sync). Anything else is part of an extended batch.
    pub fn is_single(self) -> bool {
        matches!(self, Self::Query | Self::FunctionCall) || self.is_copy()
    }
}

/// Server (backend) reply types the proxy writes itself.
pub mod back {
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
}

/// Transaction status as ReadyForQuery reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxnStatus {
    pub fn of(byte: u8) -> Self {
        match byte {
            b'T' => Self::InTransaction,
            b'E' => Self::Failed,
            _ => Self::Idle,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

impl crate::protocol::Frame {
    pub fn front(&self) -> Front {
        Front::of(self.tag)
    }
}
