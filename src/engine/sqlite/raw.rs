//! SQLite through its C API, on the calling thread (no memory-mapped reads: mapped pages
//! count as the process's resident memory, 635 MiB for a 341 MB file read twice, where
//! read(2) keeps it at about 50): for the work that reads or copies a
//! whole database (content fingerprints, the snapshot, its integrity check), where sqlx
//! would hand every row or step across threads from its worker.

use std::ffi::{c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::time::Duration;

use libsqlite3_sys as ffi;
use tokio_util::sync::CancellationToken;

/// One connection, closed on drop.
pub struct Conn {
    db: *mut ffi::sqlite3,
    /// What the progress and busy handlers read; freed after the connection is closed.
    watch: Option<*mut Watch>,
}

/// A stop to honour, and how long to wait for another connection's lock.
struct Watch {
    cancel: CancellationToken,
    busy: Duration,
}

// SAFETY: SQLite is built thread-safe (serialized), and a connection is used by one
// thread at a time (it moves to the thread that uses it).
unsafe impl Send for Conn {}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: `db` came from sqlite3_open_v2 and every statement on it was finalized
        // (a Stmt borrows its Conn); the token is freed only once nothing can call the
        // progress handler any more.
        unsafe {
            ffi::sqlite3_close(self.db);
            if let Some(watch) = self.watch.take() {
                drop(Box::from_raw(watch));
            }
        }
    }
}

/// A prepared statement, finalized on drop.
pub struct Stmt<'a> {
    conn: &'a Conn,
    stmt: *mut ffi::sqlite3_stmt,
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        // SAFETY: `stmt` came from sqlite3_prepare_v2 on the statement's connection.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

/// The progress handler: a non-zero answer interrupts the running statement.
extern "C" fn stop_when_cancelled(watch: *mut c_void) -> c_int {
    // SAFETY: the pointer is the Box'd Watch the connection owns and frees after close.
    let watch = unsafe { &*(watch as *const Watch) };
    c_int::from(watch.cancel.is_cancelled())
}

/// The busy handler: wait in steps of 10 ms for another connection's lock, up to the
/// limit, and not once the job is stopped (SQLite's own busy timeout would sleep through
/// a stop for its whole length).
extern "C" fn wait_unless_cancelled(watch: *mut c_void, tries: c_int) -> c_int {
    const STEP: Duration = Duration::from_millis(10);
    // SAFETY: as above.
    let watch = unsafe { &*(watch as *const Watch) };
    if watch.cancel.is_cancelled() || STEP * tries.max(0).unsigned_abs() >= watch.busy {
        return 0;
    }
    std::thread::sleep(STEP);
    1
}

impl Conn {
    /// Open `path` with `flags` (never creating it unless they say so), waiting up to
    /// `busy` for another connection's lock. Without SQLite's per-connection mutex: a
    /// connection is used by one thread at a time, and the mutex taken on every column
    /// read cost 6 % of a backup's CPU.
    pub fn open(path: &Path, flags: c_int, busy: Duration) -> Result<Conn, String> {
        let flags = flags | ffi::SQLITE_OPEN_NOMUTEX;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{} holds a NUL byte", path.display()))?;
        let mut db = ptr::null_mut();
        // SAFETY: a valid C string and an out pointer; the handle is closed by Drop even
        // when the open fails (SQLite asks for that).
        let rc = unsafe { ffi::sqlite3_open_v2(c_path.as_ptr(), &mut db, flags, ptr::null()) };
        let conn = Conn { db, watch: None };
        if rc != ffi::SQLITE_OK {
            return Err(format!("cannot open {}: {}", path.display(), conn.error()));
        }
        let ms = c_int::try_from(busy.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: an open handle.
        unsafe { ffi::sqlite3_busy_timeout(conn.db, ms) };
        Ok(conn)
    }

    /// Open dbkeep's own file `path` read-only (never through a symbolic link) and read
    /// its header now: from here the open file is what is read, whatever happens to its
    /// name.
    pub fn read_only(path: &Path) -> Result<Conn, String> {
        let conn = Conn::open(
            path,
            ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_NOFOLLOW,
            Duration::ZERO,
        )?;
        conn.exec("PRAGMA schema_version")?;
        Ok(conn)
    }

    /// Interrupt whatever runs on this connection once `token` is cancelled, and wait up
    /// to `busy` for another connection's lock, but not past a stop.
    pub fn stop_on(&mut self, token: &CancellationToken, busy: Duration) {
        let boxed = Box::into_raw(Box::new(Watch {
            cancel: token.clone(),
            busy,
        }));
        // SAFETY: an open handle; the Watch outlives it (freed in Drop after close).
        // Handlers set before are replaced, and their Watch freed after.
        unsafe {
            ffi::sqlite3_progress_handler(self.db, 1000, Some(stop_when_cancelled), boxed.cast());
            ffi::sqlite3_busy_handler(self.db, Some(wait_unless_cancelled), boxed.cast());
        }
        if let Some(old) = self.watch.replace(boxed) {
            // SAFETY: no longer referenced by the connection.
            unsafe { drop(Box::from_raw(old)) };
        }
    }

    pub fn error(&self) -> String {
        if self.db.is_null() {
            return "out of memory".into();
        }
        // SAFETY: the handle is open; the message is copied before the next call.
        unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db)) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>, String> {
        let mut stmt = ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(|_| "statement too long".to_string())?;
        // SAFETY: the text and its length are valid; the statement is finalized by Drop.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                self.db,
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        let stmt = Stmt { conn: self, stmt };
        if rc != ffi::SQLITE_OK {
            return Err(format!("{sql}: {}", self.error()));
        }
        Ok(stmt)
    }

    /// Run one statement to its end; its rows are not read.
    pub fn exec(&self, sql: &str) -> Result<(), String> {
        let mut stmt = self.prepare(sql)?;
        while stmt.step()? {}
        Ok(())
    }

    /// What `PRAGMA integrity_check` finds (the first five problems); nothing when it
    /// says ok.
    pub fn integrity_problems(&self) -> Result<Vec<String>, String> {
        self.problems("PRAGMA integrity_check")
    }

    /// `PRAGMA quick_check`: what [`Conn::integrity_problems`] finds but an index entry
    /// that does not match its row (every page's structure, in a fraction of the time).
    pub fn structure_problems(&self) -> Result<Vec<String>, String> {
        self.problems("PRAGMA quick_check")
    }

    fn problems(&self, pragma: &str) -> Result<Vec<String>, String> {
        let mut stmt = self.prepare(pragma)?;
        let mut rows = Vec::new();
        while rows.len() < 5 && stmt.step()? {
            rows.push(stmt.text(0));
        }
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(Vec::new());
        }
        // Some builds answer with one row of many lines: five lines at most, each short.
        Ok(rows
            .iter()
            .flat_map(|r| r.lines())
            .take(5)
            .map(|l| crate::engine::model::cut_at_char(l, 200).to_string())
            .collect())
    }

    /// Copy this database into `dest`'s page by page (SQLite's online backup), `pages` at
    /// a step, checking `cancel` between steps. The caller holds a read transaction on
    /// this connection for a copy of one moment.
    pub fn copy_into(
        &self,
        dest: &Conn,
        pages: c_int,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let main = c"main";
        // SAFETY: two open handles; the backup object is finished on every path below.
        let backup =
            unsafe { ffi::sqlite3_backup_init(dest.db, main.as_ptr(), self.db, main.as_ptr()) };
        if backup.is_null() {
            return Err(dest.error());
        }
        let mut failed = None;
        loop {
            if cancel.is_cancelled() {
                failed = Some(Err("cancelled".to_string()));
                break;
            }
            // SAFETY: a backup object not yet finished.
            match unsafe { ffi::sqlite3_backup_step(backup, pages) } {
                ffi::SQLITE_DONE => break,
                ffi::SQLITE_OK => {}
                ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                rc => {
                    failed = Some(Ok(rc));
                    break;
                }
            }
        }
        // SAFETY: finished once, here; the step's error is the connection's only after.
        let rc = unsafe { ffi::sqlite3_backup_finish(backup) };
        match failed {
            Some(Err(e)) => Err(e),
            Some(Ok(step)) => Err(format!("{} ({})", errstr(step), dest.error())),
            None if rc != ffi::SQLITE_OK => Err(format!("{} ({})", errstr(rc), dest.error())),
            None => Ok(()),
        }
    }
}

/// SQLite's text for a result code.
fn errstr(rc: c_int) -> String {
    // SAFETY: sqlite3_errstr returns a static string for any code.
    unsafe { CStr::from_ptr(ffi::sqlite3_errstr(rc)) }
        .to_string_lossy()
        .into_owned()
}

impl Stmt<'_> {
    /// The next row; false when there is none.
    pub fn step(&mut self) -> Result<bool, String> {
        // SAFETY: a prepared statement of an open connection.
        match unsafe { ffi::sqlite3_step(self.stmt) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            _ => Err(self.conn.error()),
        }
    }

    /// Column `i` of the current row as text.
    pub fn text(&self, i: c_int) -> String {
        // SAFETY: the statement is on a row; the bytes are copied before the next step.
        unsafe {
            let p = ffi::sqlite3_column_text(self.stmt, i);
            let n = usize::try_from(ffi::sqlite3_column_bytes(self.stmt, i)).unwrap_or(0);
            if p.is_null() {
                return String::new();
            }
            String::from_utf8_lossy(std::slice::from_raw_parts(p, n)).into_owned()
        }
    }

    pub fn columns(&self) -> c_int {
        // SAFETY: as above.
        unsafe { ffi::sqlite3_column_count(self.stmt) }
    }

    /// The statement's handle, for reading column values in place.
    pub fn as_ptr(&self) -> *mut ffi::sqlite3_stmt {
        self.stmt
    }
}
