//! A real, throwaway PostgreSQL server for the store suite, and a fresh
//! database on it per test.
//!
//! The first test that needs PostgreSQL starts one server for the whole test
//! process: `initdb` into a temp dir, then `postgres` on a free port,
//! listening only on a unix socket in that dir, with fsync off (the data is
//! thrown away). As root (here and in CI) it runs as the `postgres` system
//! user, since PostgreSQL refuses to run as root. The server goes away with
//! the process: an `atexit` handler shuts it down (immediate mode, waiting
//! until it and its backends have exited) and removes the temp dir, and the
//! server is started with a parent-death signal, so it is killed even if the
//! test process is killed before it can clean up.
//!
//! With `FLYWHEEL_TEST_DATABASE_URL` set (a URL to a database whose user may
//! create databases), that server is used instead and none is started.

use sqlx::{Connection, Executor, PgConnection};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The server's admin URL, or why there is none (every test reports it).
static SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// The server this process started, for the exit handler.
static STARTED: Mutex<Option<StartedServer>> = Mutex::new(None);

struct StartedServer {
    postmaster: Child,
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
}

/// A database of its own for one test; dropped (with its connections) when
/// the test ends.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

/// Creates a fresh database, starting the server first if needed.
pub async fn fresh_database() -> TestDatabase {
    let admin_url = match SERVER.get_or_init(server_url) {
        Ok(url) => url.clone(),
        Err(why) => panic!("{why}"),
    };
    let name = format!("t_{:016x}", rand::random::<u64>());
    let mut admin = PgConnection::connect(&admin_url).await.expect("connecting to the test PostgreSQL server");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("creating a test database");
    admin.close().await.expect("closing the admin connection");
    TestDatabase { url: with_database(&admin_url, &name), admin_url, name }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread with a runtime of its own does the async work.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn server_url() -> Result<String, String> {
    if let Ok(url) = std::env::var("FLYWHEEL_TEST_DATABASE_URL") {
        if !url.is_empty() {
            return Ok(url);
        }
    }
    start_server()
}

/// The newest `/usr/lib/postgresql/<version>/bin` with the server in it.
fn find_binaries() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "the store suite needs a real PostgreSQL server, but no initdb/postgres was found in \
         /usr/lib/postgresql/*/bin: apt install postgresql (or set FLYWHEEL_TEST_DATABASE_URL to a server's URL)"
            .to_owned()
    })
}

/// The user and group to run the server as: `postgres` when we are root,
/// ourselves otherwise.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated name; the result is read at once, before any
    // other call could reuse getpwnam's static buffer.
    let user = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if user.is_null() {
        return Err("running as root, but there is no `postgres` user to run the test server as \
                    (apt install postgresql creates it)"
            .to_owned());
    }
    // SAFETY: non-null, points to a valid passwd entry.
    Ok(Some(unsafe { ((*user).pw_uid, (*user).pw_gid) }))
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

fn start_server() -> Result<String, String> {
    let bin = find_binaries()?;
    let user = server_user()?;
    remove_stale_servers();
    let dir = tempfile::Builder::new()
        .prefix("flywheel-pg-")
        .tempdir()
        .map_err(|e| format!("could not create a temp dir for PostgreSQL: {e}"))?
        .keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("could not chown {dir:?}: {e}"))?;
    }
    let data = dir.join("data");
    let initdb = as_user(Command::new(bin.join("initdb")).current_dir(&dir), user)
        .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"])
        .arg(&data)
        .output()
        .map_err(|e| format!("could not run initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("could not find a free port: {e}"))?
        .port();
    let postmaster = spawn_postmaster(&bin, &dir, &data, port, user)?;
    let pid = postmaster.id();
    *STARTED.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(StartedServer { postmaster, dir: dir.clone(), bin: bin.clone(), port, user });
    // SAFETY: registers a plain extern "C" function.
    unsafe { libc::atexit(stop_server) };
    wait_until_ready(&bin, &dir, port, pid)?;
    Ok(format!("postgres://postgres@localhost:{port}/postgres?host={}", dir.display()))
}

/// Removes the temp dirs of test servers whose process was killed before
/// its exit handler could run (the parent-death signal ended the server,
/// nothing removed its files). A dir in use has a live postmaster, or is
/// younger than a few minutes (initdb still running).
fn remove_stale_servers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("flywheel-pg-") {
            continue;
        }
        let stale = match std::fs::read_to_string(path.join("data/postmaster.pid")) {
            // The first line is the postmaster's pid.
            Ok(pid_file) => pid_file
                .lines()
                .next()
                .and_then(|pid| pid.trim().parse::<libc::pid_t>().ok())
                // SAFETY: signal 0 only checks whether the process exists.
                .is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0),
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > Duration::from_secs(600))),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Starts `postgres` from a thread that lives as long as the process: the
/// parent-death signal fires when the thread that forked exits, not the
/// process.
fn spawn_postmaster(bin: &Path, dir: &Path, data: &Path, port: u16, user: Option<(u32, u32)>) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| format!("could not create the log: {e}"))?;
    let mut command = Command::new(bin.join("postgres"));
    as_user(command.current_dir(dir), user)
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=32MB"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec. The
    // uid/gid change happens before this hook, so the signal set here is not
    // cleared by it (and postgres is not set-uid, so exec keeps it).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-parent".into())
        .spawn(move || {
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("could not start a thread: {e}"))?;
    rx.recv()
        .map_err(|e| format!("the postgres-parent thread died: {e}"))?
        .map_err(|e| format!("could not start postgres: {e}"))
}

fn wait_until_ready(bin: &Path, dir: &Path, port: u16, pid: u32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(dir)
            .arg("-p")
            .arg(port.to_string())
            .status()
            .map_err(|e| format!("could not run pg_isready: {e}"))?;
        if ready.success() {
            return Ok(());
        }
        let exited = STARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .is_some_and(|server| !matches!(server.postmaster.try_wait(), Ok(None)));
        if exited || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("the test PostgreSQL server (pid {pid}) did not start:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts the test server the way `pg_ctl restart -m fast` does: every
/// connection is cut, the server is down for `down_for`, then it accepts
/// connections again on the same port with the same data. Only for the
/// server this process started (not FLYWHEEL_TEST_DATABASE_URL).
pub fn restart_server(down_for: Duration) {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    let server = started.as_mut().expect("restart_server needs the test's own PostgreSQL server");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.postmaster.id() as libc::pid_t, libc::SIGINT) };
    server.postmaster.wait().expect("wait for the postmaster");
    std::thread::sleep(down_for);
    let data = server.dir.join("data");
    server.postmaster =
        spawn_postmaster(&server.bin, &server.dir, &data, server.port, server.user).expect("start postgres again");
    let (bin, dir, port, pid) = (server.bin.clone(), server.dir.clone(), server.port, server.postmaster.id());
    drop(started);
    wait_until_ready(&bin, &dir, port, pid).expect("postgres is back");
}

/// At exit: immediate shutdown (SIGQUIT; the postmaster ends its backends
/// and exits), a SIGKILL if that takes too long, then the temp dir goes.
extern "C" fn stop_server() {
    let Some(mut server) = STARTED.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    let pid = server.postmaster.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(server.postmaster.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = server.postmaster.kill();
            let _ = server.postmaster.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&server.dir);
}
