//! A **mock** SQL Server (TDS 7.3/7.4) for tests of the tiberius code path.
//! It is test support only (under adapters/tests/, never in the production
//! code path): SQL Server itself cannot run on this machine and no registry
//! here has it (ecosystem-notes §5).
//!
//! Speaks, without TLS (clients must use `EncryptionLevel::NotSupported`,
//! ADO `encrypt=DANGER_PLAINTEXT`):
//! - PRELOGIN → a PRELOGIN answer (version, encryption not supported);
//! - LOGIN7 → LOGINACK (TDS version big-endian, as SQL Server writes it),
//!   ENVCHANGE (database, packet size), DONE; or error 18456 when the
//!   password is not the configured one;
//! - SQLBatch and RPC (`sp_executesql` by id or name, parameters decoded
//!   and captured: int, bit, float, (n)varchar incl. PLP, binary, datetime2)
//!   → whatever the test's handler returns: row sets (bigint, int, nvarchar
//!   incl. Chinese, float, bit, datetime2, NULLs), an ERROR token, or a
//!   row count;
//! - ATTENTION → DONE with the attention bit.
//!
//! Hand-written token encoding (MS-TDS 2.2.4–2.2.7); one task per
//! connection. Every request is recorded in [`MockTdsServer::requests`].
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a client sent (captured for assertions).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// LOGIN7: user, database, application name.
    Login {
        /// User name.
        user: String,
        /// Initial database.
        database: String,
        /// Application name.
        app: String,
    },
    /// An SQLBatch text.
    Batch(String),
    /// An RPC: the procedure (`sp_executesql` for id 10) and its parameters.
    Rpc {
        /// Procedure name.
        procedure: String,
        /// Parameters in order (for sp_executesql: @stmt, @params, @P1..).
        params: Vec<Param>,
    },
}

impl Request {
    /// The SQL text: the batch, or sp_executesql's statement.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Request::Batch(s) => Some(s),
            Request::Rpc { params, .. } => match params.first().map(|p| &p.value) {
                Some(Value::Text(s)) => Some(s),
                _ => None,
            },
            Request::Login { .. } => None,
        }
    }

    /// sp_executesql's value parameters (@P1, @P2, ...).
    pub fn values(&self) -> Vec<Value> {
        match self {
            Request::Rpc { params, .. } => params.iter().skip(2).map(|p| p.value.clone()).collect(),
            _ => Vec::new(),
        }
    }
}

/// One RPC parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name (e.g. `@P1`, may be empty).
    pub name: String,
    /// Decoded value.
    pub value: Value,
}

/// A value in a row or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// Any integer type.
    Int(i64),
    /// float/real.
    Float(f64),
    /// bit.
    Bit(bool),
    /// (n)(var)char.
    Text(String),
    /// binary types, GUIDs and types the mock does not decode (raw bytes).
    Bytes(Vec<u8>),
    /// datetime2 (scale 7): days since 0001-01-01 and 100 ns ticks since midnight.
    DateTime2 {
        /// Days since 0001-01-01.
        days: u32,
        /// 100 ns units since midnight.
        ticks: u64,
    },
}

impl Value {
    /// A datetime2 value from a chrono date-time.
    pub fn datetime2(dt: chrono::NaiveDateTime) -> Value {
        use chrono::Timelike as _;
        let base = chrono::NaiveDate::from_ymd_opt(1, 1, 1).expect("0001-01-01");
        let days = (dt.date() - base).num_days() as u32;
        let t = dt.time();
        let ticks = u64::from(t.num_seconds_from_midnight()) * 10_000_000 + u64::from(t.nanosecond() / 100);
        Value::DateTime2 { days, ticks }
    }
}

/// Column types the mock can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// bigint (INTN 8).
    BigInt,
    /// int (INTN 4).
    Int,
    /// nvarchar(4000).
    NVarChar,
    /// float (FLTN 8).
    Float,
    /// bit (BITN).
    Bit,
    /// datetime2(7).
    DateTime2,
}

/// One item of a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A result set.
    Rows {
        /// (name, type) per column.
        columns: Vec<(String, ColType)>,
        /// Rows (values in column order).
        rows: Vec<Vec<Value>>,
    },
    /// An ERROR token (then a DONE with the error bit).
    Error {
        /// Error number (e.g. 208 invalid object name).
        number: u32,
        /// Severity class (16 for user errors).
        class: u8,
        /// Message.
        message: String,
    },
    /// A row count (INSERT/UPDATE).
    Affected(u64),
}

type Handler = dyn Fn(&Request) -> Vec<Reply> + Send + Sync;

/// A running mock server.
pub struct MockTdsServer {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockTdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockTdsServer").field("addr", &self.addr).finish()
    }
}

impl Drop for MockTdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockTdsServer {
    /// Starts on 127.0.0.1 (random port); `password` is the only accepted
    /// one; `handler` answers batches and RPCs.
    pub async fn start(password: &str, handler: impl Fn(&Request) -> Vec<Reply> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock TDS server");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let password = password.to_string();
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, reqs, password) = (handler.clone(), reqs.clone(), password.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &*handler, &reqs, &password).await;
                });
            }
        });
        MockTdsServer { addr, requests, task }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

// ------------------------------------------------------------ packets

const PT_BATCH: u8 = 0x01;
const PT_RPC: u8 = 0x03;
const PT_REPLY: u8 = 0x04;
const PT_ATTENTION: u8 = 0x06;
const PT_LOGIN7: u8 = 0x10;
const PT_PRELOGIN: u8 = 0x12;
const PACKET: usize = 4096;

async fn read_message(s: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; 8];
        match s.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        if len < 8 {
            return Err(std::io::Error::other("bad TDS packet length"));
        }
        let mut body = vec![0u8; len - 8];
        s.read_exact(&mut body).await?;
        payload.extend_from_slice(&body);
        if h[1] & 0x01 != 0 {
            return Ok(Some((h[0], payload)));
        }
    }
}

async fn write_message(s: &mut TcpStream, ty: u8, payload: &[u8]) -> std::io::Result<()> {
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(PACKET - 8).collect()
    };
    let n = chunks.len();
    let mut out = Vec::with_capacity(payload.len() + 8 * n);
    for (i, c) in chunks.into_iter().enumerate() {
        out.push(ty);
        out.push(if i + 1 == n { 0x01 } else { 0x00 });
        out.extend_from_slice(&((c.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // spid
        out.push((i + 1) as u8);
        out.push(0);
        out.extend_from_slice(c);
    }
    s.write_all(&out).await?;
    s.flush().await
}

// ------------------------------------------------------------ encoding helpers

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn b_varchar(out: &mut Vec<u8>, s: &str) {
    out.push(s.encode_utf16().count() as u8);
    out.extend(utf16(s));
}

fn us_varchar(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.encode_utf16().count() as u16).to_le_bytes());
    out.extend(utf16(s));
}

fn done(out: &mut Vec<u8>, token: u8, status: u16, rows: u64) {
    out.push(token);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0xC1u16.to_le_bytes()); // cur cmd: SELECT
    out.extend_from_slice(&rows.to_le_bytes());
}

fn error_token(out: &mut Vec<u8>, number: u32, class: u8, message: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&number.to_le_bytes());
    body.push(1); // state
    body.push(class);
    us_varchar(&mut body, message);
    b_varchar(&mut body, "vaxgate-mock-tds");
    b_varchar(&mut body, "");
    body.extend_from_slice(&1u32.to_le_bytes()); // line
    out.push(0xAA);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend(body);
}

fn env_change(out: &mut Vec<u8>, ty: u8, new: &str, old: &str) {
    let mut body = vec![ty];
    b_varchar(&mut body, new);
    b_varchar(&mut body, old);
    out.push(0xE3);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend(body);
}

const COLLATION: [u8; 5] = [0x04, 0x08, 0xD0, 0x00, 0x34]; // zh-CN LCID 0x0804

fn col_metadata(out: &mut Vec<u8>, columns: &[(String, ColType)]) {
    out.push(0x81);
    out.extend_from_slice(&(columns.len() as u16).to_le_bytes());
    for (name, ty) in columns {
        out.extend_from_slice(&0u32.to_le_bytes()); // user type
        out.extend_from_slice(&0x0001u16.to_le_bytes()); // nullable
        match ty {
            ColType::BigInt => out.extend_from_slice(&[0x26, 8]),
            ColType::Int => out.extend_from_slice(&[0x26, 4]),
            ColType::Float => out.extend_from_slice(&[0x6D, 8]),
            ColType::Bit => out.extend_from_slice(&[0x68, 1]),
            ColType::DateTime2 => out.extend_from_slice(&[0x2A, 7]),
            ColType::NVarChar => {
                out.push(0xE7);
                out.extend_from_slice(&8000u16.to_le_bytes());
                out.extend_from_slice(&COLLATION);
            }
        }
        b_varchar(out, name);
    }
}

fn row(out: &mut Vec<u8>, columns: &[(String, ColType)], values: &[Value]) -> Result<(), String> {
    out.push(0xD1);
    for (i, (name, ty)) in columns.iter().enumerate() {
        let v = values.get(i).unwrap_or(&Value::Null);
        match (ty, v) {
            (ColType::NVarChar, Value::Null) => out.extend_from_slice(&0xFFFFu16.to_le_bytes()),
            (_, Value::Null) => out.push(0),
            (ColType::BigInt, Value::Int(n)) => {
                out.push(8);
                out.extend_from_slice(&n.to_le_bytes());
            }
            (ColType::Int, Value::Int(n)) => {
                out.push(4);
                out.extend_from_slice(&(*n as i32).to_le_bytes());
            }
            (ColType::Float, Value::Float(f)) => {
                out.push(8);
                out.extend_from_slice(&f.to_le_bytes());
            }
            (ColType::Bit, Value::Bit(b)) => out.extend_from_slice(&[1, u8::from(*b)]),
            (ColType::NVarChar, Value::Text(s)) => {
                let b = utf16(s);
                out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                out.extend(b);
            }
            (ColType::DateTime2, Value::DateTime2 { days, ticks }) => {
                out.push(8);
                out.extend_from_slice(&ticks.to_le_bytes()[..5]);
                out.extend_from_slice(&days.to_le_bytes()[..3]);
            }
            (ty, v) => return Err(format!("mock: column {name} is {ty:?}, value {v:?} does not fit")),
        }
    }
    Ok(())
}

/// Encodes `replies` as the token stream of one response; RPC responses
/// end in RETURNSTATUS + DONEPROC as SQL Server's do.
fn encode_replies(replies: &[Reply], rpc: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (mid, fin) = if rpc { (0xFF, 0xFE) } else { (0xFD, 0xFD) };
    let n = replies.len();
    for (i, r) in replies.iter().enumerate() {
        let more = if i + 1 < n || rpc { 0x0001 } else { 0 };
        match r {
            Reply::Rows { columns, rows } => {
                col_metadata(&mut out, columns);
                for values in rows {
                    if let Err(e) = row(&mut out, columns, values) {
                        error_token(&mut out, 50000, 16, &e);
                        done(&mut out, mid, more | 0x0002, 0);
                        break;
                    }
                }
                done(&mut out, mid, more | 0x0010, rows.len() as u64);
            }
            Reply::Error { number, class, message } => {
                error_token(&mut out, *number, *class, message);
                done(&mut out, mid, more | 0x0002, 0);
            }
            Reply::Affected(k) => done(&mut out, mid, more | 0x0010, *k),
        }
    }
    if n == 0 && !rpc {
        done(&mut out, 0xFD, 0, 0);
    }
    if rpc {
        out.push(0x79);
        out.extend_from_slice(&0i32.to_le_bytes());
        done(&mut out, fin, 0, 0);
    }
    out
}

// ------------------------------------------------------------ decoding

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.p..self.p + n)
            .ok_or_else(|| format!("mock: truncated request at byte {}", self.p))?;
        self.p += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn utf16(&mut self, chars: usize) -> Result<String, String> {
        let b = self.take(chars * 2)?;
        let units: Vec<u16> = b.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Ok(String::from_utf16_lossy(&units))
    }
}

fn skip_all_headers(c: &mut Cur<'_>) -> Result<(), String> {
    let total = c.u32()? as usize;
    if total < 4 {
        return Err("mock: bad ALL_HEADERS length".into());
    }
    c.take(total - 4)?;
    Ok(())
}

fn login7(payload: &[u8]) -> Result<(String, String, String, String), String> {
    let field = |at: usize| -> Result<String, String> {
        let off = u16::from_le_bytes([payload[at], payload[at + 1]]) as usize;
        let len = u16::from_le_bytes([payload[at + 2], payload[at + 3]]) as usize;
        let b = payload
            .get(off..off + len * 2)
            .ok_or("mock: LOGIN7 field out of range")?;
        Ok(b.to_vec()
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .fold(String::new(), |mut s, u| {
                s.push(char::from_u32(u32::from(u)).unwrap_or('?'));
                s
            }))
    };
    if payload.len() < 94 {
        return Err("mock: LOGIN7 too short".into());
    }
    let user = field(40)?;
    // password: each byte nibble-swapped, then XOR 0xA5
    let off = u16::from_le_bytes([payload[44], payload[45]]) as usize;
    let len = u16::from_le_bytes([payload[46], payload[47]]) as usize;
    let raw = payload
        .get(off..off + len * 2)
        .ok_or("mock: LOGIN7 password out of range")?;
    let plain: Vec<u8> = raw.iter().map(|b| (b ^ 0xA5).rotate_left(4)).collect();
    let units: Vec<u16> = plain.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let password = String::from_utf16_lossy(&units);
    Ok((user, password, field(48)?, field(68)?))
}

fn type_and_value(c: &mut Cur<'_>) -> Result<Value, String> {
    let ty = c.u8()?;
    match ty {
        // fixed-length
        0x30 => Ok(Value::Int(i64::from(c.u8()?))),
        0x32 => Ok(Value::Bit(c.u8()? != 0)),
        0x34 => Ok(Value::Int(i64::from(c.u16()? as i16))),
        0x38 => Ok(Value::Int(i64::from(c.u32()? as i32))),
        0x7F => Ok(Value::Int(c.u64()? as i64)),
        0x3E => Ok(Value::Float(f64::from_bits(c.u64()?))),
        0x3B => Ok(Value::Float(f64::from(f32::from_bits(c.u32()?)))),
        // byte-length types: INTN, BITN, FLTN, GUID, DATETIMEN, MONEYN
        0x26 | 0x68 | 0x6D | 0x24 | 0x6F | 0x6E => {
            let _max = c.u8()?;
            let n = c.u8()? as usize;
            let b = c.take(n)?;
            Ok(match (ty, n) {
                (_, 0) => Value::Null,
                (0x26, _) => {
                    let mut a = [0u8; 8];
                    a[..n].copy_from_slice(b);
                    let v = i64::from_le_bytes(a);
                    // sign-extend
                    let shift = 64 - 8 * n as u32;
                    Value::Int((v << shift) >> shift)
                }
                (0x68, _) => Value::Bit(b[0] != 0),
                (0x6D, 8) => Value::Float(f64::from_le_bytes(b.try_into().map_err(|_| "float")?)),
                (0x6D, 4) => Value::Float(f64::from(f32::from_le_bytes(b.try_into().map_err(|_| "real")?))),
                _ => Value::Bytes(b.to_vec()),
            })
        }
        // DECIMALN / NUMERICN: len, precision, scale
        0x6A | 0x6C => {
            let _len = c.u8()?;
            let (_p, _s) = (c.u8()?, c.u8()?);
            let n = c.u8()? as usize;
            Ok(if n == 0 {
                Value::Null
            } else {
                Value::Bytes(c.take(n)?.to_vec())
            })
        }
        // DATETIME2N, TIMEN, DATETIMEOFFSETN: scale; DATEN: none
        0x28..=0x2B => {
            let scale = if ty == 0x28 { 0 } else { c.u8()? };
            let n = c.u8()? as usize;
            if n == 0 {
                return Ok(Value::Null);
            }
            let b = c.take(n)?;
            if ty == 0x2A {
                let tlen = n - 3;
                let mut t = [0u8; 8];
                t[..tlen].copy_from_slice(&b[..tlen]);
                let ticks = u64::from_le_bytes(t) * 10u64.pow(7u32.saturating_sub(u32::from(scale)));
                let days = u32::from_le_bytes([b[tlen], b[tlen + 1], b[tlen + 2], 0]);
                return Ok(Value::DateTime2 { days, ticks });
            }
            Ok(Value::Bytes(b.to_vec()))
        }
        // u16-length types: NVARCHAR, NCHAR, BIGVARCHAR, BIGCHAR, BIGVARBIN, BIGBINARY
        0xE7 | 0xEF | 0xA7 | 0xAF | 0xA5 | 0xAD => {
            let max = c.u16()?;
            let text = matches!(ty, 0xE7 | 0xEF | 0xA7 | 0xAF);
            if text {
                c.take(5)?; // collation
            }
            let bytes = if max == 0xFFFF {
                // PLP
                let total = c.u64()?;
                if total == u64::MAX {
                    return Ok(Value::Null);
                }
                let mut v = Vec::new();
                loop {
                    let n = c.u32()? as usize;
                    if n == 0 {
                        break;
                    }
                    v.extend_from_slice(c.take(n)?);
                }
                v
            } else {
                let n = c.u16()?;
                if n == 0xFFFF {
                    return Ok(Value::Null);
                }
                c.take(n as usize)?.to_vec()
            };
            Ok(match ty {
                0xE7 | 0xEF => {
                    let units: Vec<u16> = bytes
                        .chunks(2)
                        .map(|c| u16::from_le_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
                        .collect();
                    Value::Text(String::from_utf16_lossy(&units))
                }
                0xA7 | 0xAF => Value::Text(String::from_utf8_lossy(&bytes).into_owned()),
                _ => Value::Bytes(bytes),
            })
        }
        other => Err(format!("mock: unsupported parameter type 0x{other:02X}")),
    }
}

fn rpc(payload: &[u8]) -> Result<Request, String> {
    let mut c = Cur { b: payload, p: 0 };
    skip_all_headers(&mut c)?;
    let first = c.u16()?;
    let procedure = if first == 0xFFFF {
        match c.u16()? {
            10 => "sp_executesql".to_string(),
            11 => "sp_prepare".to_string(),
            13 => "sp_prepexec".to_string(),
            id => format!("proc#{id}"),
        }
    } else {
        c.utf16(first as usize)?
    };
    let _flags = c.u16()?;
    let mut params = Vec::new();
    while c.p < payload.len() {
        let n = c.u8()? as usize;
        let name = c.utf16(n)?;
        let _status = c.u8()?;
        let value = type_and_value(&mut c)?;
        params.push(Param { name, value });
    }
    Ok(Request::Rpc { procedure, params })
}

fn prelogin_reply() -> Vec<u8> {
    // option table: VERSION(6) ENCRYPTION(1) INSTOPT(1) THREADID(0) MARS(1) + terminator
    let opts: [(u8, u16); 5] = [(0, 6), (1, 1), (2, 1), (3, 0), (4, 1)];
    let mut out = Vec::new();
    let mut off = (opts.len() * 5 + 1) as u16;
    for (t, len) in opts {
        out.push(t);
        out.extend_from_slice(&off.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        off += len;
    }
    out.push(0xFF);
    out.extend_from_slice(&[16, 0, 0x07, 0xD0, 0, 0]); // version 16.0.2000, subbuild 0
    out.push(0x02); // ENCRYPT_NOT_SUP
    out.push(0x00); // instance ok
    out.push(0x00); // MARS off
    out
}

/// The error the mock answers a request it cannot read with.
fn mock_error(message: String) -> Reply {
    Reply::Error {
        number: 50000,
        class: 16,
        message,
    }
}

async fn serve(mut s: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>, password: &str) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let record = |r: Request| {
        if let Ok(mut l) = log.lock() {
            l.push(r);
        }
    };
    while let Some((ty, payload)) = read_message(&mut s).await? {
        match ty {
            PT_PRELOGIN => write_message(&mut s, PT_REPLY, &prelogin_reply()).await?,
            PT_LOGIN7 => {
                let mut out = Vec::new();
                match login7(&payload) {
                    Ok((user, pw, app, database)) => {
                        record(Request::Login {
                            user: user.clone(),
                            database: database.clone(),
                            app,
                        });
                        if pw != password {
                            error_token(&mut out, 18456, 14, &format!("Login failed for user '{user}'."));
                            done(&mut out, 0xFD, 0x0002, 0);
                        } else {
                            let db = if database.is_empty() {
                                "master"
                            } else {
                                database.as_str()
                            };
                            env_change(&mut out, 1, db, "master");
                            // LOGINACK: interface, TDS version (big-endian), prog name, version
                            let mut body = vec![1u8];
                            body.extend_from_slice(&0x7400_0004u32.to_be_bytes());
                            b_varchar(&mut body, "vaxgate mock TDS");
                            body.extend_from_slice(&[16, 0, 0x07, 0xD0]);
                            out.push(0xAD);
                            out.extend_from_slice(&(body.len() as u16).to_le_bytes());
                            out.extend(body);
                            env_change(&mut out, 4, "4096", "4096");
                            done(&mut out, 0xFD, 0, 0);
                        }
                    }
                    Err(e) => {
                        error_token(&mut out, 50000, 20, &e);
                        done(&mut out, 0xFD, 0x0002, 0);
                    }
                }
                write_message(&mut s, PT_REPLY, &out).await?;
            }
            PT_BATCH | PT_RPC => {
                let rpc_reply = ty == PT_RPC;
                let parsed = if rpc_reply {
                    rpc(&payload)
                } else {
                    let mut c = Cur { b: &payload, p: 0 };
                    skip_all_headers(&mut c)
                        .and_then(|_| c.utf16((payload.len() - c.p) / 2))
                        .map(Request::Batch)
                };
                let out = match parsed {
                    Ok(req) => {
                        let replies = handler(&req);
                        record(req);
                        encode_replies(&replies, rpc_reply)
                    }
                    Err(e) => encode_replies(&[mock_error(e)], rpc_reply),
                };
                write_message(&mut s, PT_REPLY, &out).await?;
            }
            PT_ATTENTION => {
                let mut out = Vec::new();
                done(&mut out, 0xFD, 0x0020, 0);
                write_message(&mut s, PT_REPLY, &out).await?;
            }
            other => {
                let out = encode_replies(
                    &[mock_error(format!("mock: unsupported packet type 0x{other:02X}"))],
                    false,
                );
                write_message(&mut s, PT_REPLY, &out).await?;
            }
        }
    }
    Ok(())
}
