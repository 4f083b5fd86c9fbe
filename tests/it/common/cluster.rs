//! A private PostgreSQL server for tests that crash or stop it, and a TCP proxy that cuts
//! connections to it at random points.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A private PostgreSQL server in a temporary directory.
/// Settings of a server whose commits do not wait for the disk.
pub const NO_FSYNC: &str = "-c fsync=off";

/// Settings of a server on a disk whose flushes take 5 ms, as many production disks' do: each
/// commit waits that long after its commit record is written to the log buffers and before
/// it reaches the operating system, so a crash lands in the middle of a commit often.
pub const SLOW_DISK: &str = "-c fsync=on -c commit_delay=5000 -c commit_siblings=0";

pub struct Server {
    /// Server settings, as `-c name=value` options.
    settings: String,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Makes `dir` the `postgres` user's when we are root, so that the server can use it.
fn give_to_postgres(dir: &Path) -> Option<()> {
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .ok()?;
    }
    Some(())
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (PostgreSQL refuses to
/// run as root).
fn pg(bin: &Path, tool: &str, args: &[&str]) -> bool {
    let program = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Server {
    /// A server with these settings (`-c name=value …`).
    pub fn start_with(settings: &str) -> Option<Server> {
        let bindir = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bin = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
        if !bin.join("initdb").exists() {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("heimdall_pg_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).ok()?;
        give_to_postgres(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let data = dir.join("data");
        let ok = pg(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str()?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let server = Server {
            settings: settings.to_owned(),
            bin,
            dir,
            port,
        };
        (ok && server.up()).then_some(server)
    }

    pub fn up(&self) -> bool {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {}",
            self.port,
            self.dir.display(),
            self.settings
        );
        pg(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        )
    }

    pub fn down(&self) -> bool {
        let data = self.dir.join("data");
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        )
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`): backends exit at once,
    /// whatever they were doing, and the next start recovers from the write-ahead log.
    pub fn crash(&self) -> bool {
        let data = self.dir.join("data");
        pg(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// The server, or `None` with the test skipped (failed under `CI=true`) when the
    /// PostgreSQL server binaries are missing.
    pub fn start_or_skip(test: &str, settings: &str) -> Option<Server> {
        let server = Server::start_with(settings);
        if server.is_none() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test} needs the PostgreSQL server binaries (initdb, pg_ctl)");
            }
            eprintln!("SKIPPED {test}: no PostgreSQL server binaries");
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a server that, while cutting, closes connections in the middle of
/// what they carry: after a random prefix of a read, in either direction, with probability
/// `1 / one_in` per read. A cut while the server answers a commit leaves the client not
/// knowing whether it committed; a cut while the client sends leaves the server with half a
/// message.
pub struct Proxy {
    pub port: u16,
    cutting: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16, one_in: u32) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cutting = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let (c, n) = (Arc::clone(&cutting), Arc::clone(&cuts));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(relay(
                    client,
                    server,
                    Arc::clone(&c),
                    Arc::clone(&n),
                    one_in,
                ));
            }
        });
        Proxy {
            port,
            cutting,
            cuts,
            task,
        }
    }

    pub fn cut(&self, on: bool) {
        self.cutting.store(on, Ordering::SeqCst);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes or a cut; dropping the sockets closes both.
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    cutting: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    one_in: u32,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        let (n, to_server) = tokio::select! {
            r = cr.read(&mut up) => (r, true),
            r = sr.read(&mut down) => (r, false),
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (buf, out) = if to_server {
            (&up[..n], &mut sw)
        } else {
            (&down[..n], &mut cw)
        };
        if cutting.load(Ordering::SeqCst) && rand::random::<u32>() % one_in == 0 {
            let prefix = rand::random::<usize>() % n;
            let _ = out.write_all(&buf[..prefix]).await;
            cuts.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if out.write_all(buf).await.is_err() {
            return;
        }
    }
}

/// A certificate authority and a server certificate for `localhost` (and 127.0.0.1) signed by
/// it, made with the `openssl` command in a temporary directory the server can read.
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    /// `None` when the `openssl` command is missing.
    pub fn make() -> Option<TlsFiles> {
        let dir =
            std::env::temp_dir().join(format!("heimdall_tls_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .ok()?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=heimdall test authority",
                ],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        ];
        for args in steps {
            let ok = Command::new("openssl")
                .args(&args)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return None;
            }
        }
        // PostgreSQL reads its key only when the database user owns it, unreadable to others.
        Command::new("chmod")
            .args(["600"])
            .arg(dir.join("server.key"))
            .status()
            .ok()?;
        give_to_postgres(&dir)?;
        Some(TlsFiles { dir })
    }

    pub fn authority(&self) -> String {
        self.dir.join("ca.crt").display().to_string()
    }

    /// Settings of a server that offers TLS with the server certificate.
    pub fn server_settings(&self) -> String {
        format!(
            "{NO_FSYNC} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            self.dir.join("server.crt").display(),
            self.dir.join("server.key").display()
        )
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
