//! Who asks the engine for something, and what they may do: the permissions a verified token grants
//! (`net::auth` builds them), or a trusted caller (development mode, server-side operations).

/// Who is asking, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject; `None` for trusted callers (development mode, server-side operations).
    pub owner: Option<String>,
    read: Vec<String>,
    write: Vec<String>,
    agent: bool,
    /// The token's `exp` (seconds since the epoch).
    pub expires: Option<u64>,
    /// The connection asking (0: none, such as a server-side operation). A run remembers the last connection that
    /// started or changed it: its producer.
    pub connection: u64,
}

fn allows(list: &[String], space: &str) -> bool {
    list.iter().any(|s| s == "*" || s == space)
}

impl Caller {
    /// A token's caller: `owner` is its subject, `read` and `write` the spaces it may read and change (`"*"`: all),
    /// `agent` whether it may change other owners' runs, `expires` its `exp`.
    pub fn new(owner: String, read: Vec<String>, write: Vec<String>, agent: bool, expires: u64) -> Caller {
        Caller { owner: Some(owner), read, write, agent, expires: Some(expires), connection: 0 }
    }

    /// A caller that may do anything (development mode, and the server's own operations).
    pub fn trusted() -> Caller {
        Caller {
            owner: None,
            read: vec!["*".into()],
            write: vec!["*".into()],
            agent: true,
            expires: None,
            connection: 0,
        }
    }

    /// The same caller, speaking on connection `id`.
    pub fn on_connection(&self, id: u64) -> Caller {
        Caller { connection: id, ..self.clone() }
    }

    pub fn can_read(&self, space: &str) -> bool {
        self.owner.is_none() || allows(&self.read, space)
    }

    pub fn can_write(&self, space: &str) -> bool {
        self.owner.is_none() || allows(&self.write, space)
    }

    /// Whether it may patch, complete or fail a run of `owner` in `space`.
    pub fn can_change(&self, owner: &str, space: &str) -> bool {
        match &self.owner {
            None => true,
            Some(me) => self.can_write(space) && (me == owner || self.agent),
        }
    }
}
