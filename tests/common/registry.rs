//! A real CNCF distribution registry (`docker-registry`) on a free loopback port, started and
//! stopped by the test itself: anonymous, htpasswd basic auth, or bearer tokens from a small
//! token server (Python + openssl). The access log gives the bytes the registry sent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{have, require};

pub const USER: &str = "zstore";
pub const PASS: &str = "zstore-test-pw";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuthKind {
    Anonymous,
    Basic,
    Token,
}

pub struct TestRegistry {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub dir: PathBuf,
    children: Vec<Child>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TOKEN_SERVER: &str = r#"
import base64, json, os, subprocess, sys, time, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
port, key, crt, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
der = subprocess.run(["openssl", "x509", "-in", crt, "-outform", "DER"], capture_output=True, check=True).stdout
def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def sign(claims):
    head = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
    signing_input = b64u(json.dumps(head).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(), capture_output=True, check=True).stdout
    return signing_input + "." + b64u(sig)
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        good = auth.startswith("Basic ") and base64.b64decode(auth[6:]).decode() == user + ":" + pw
        if url.path != "/token" or not good:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="token"')
            self.end_headers()
            return
        access = []
        for scope in q.get("scope", []):
            for one in scope.split(" "):
                parts = one.split(":", 2)
                if len(parts) == 3:
                    access.append({"type": parts[0], "name": parts[1], "actions": [a for a in parts[2].split(",") if a]})
        now = int(time.time())
        token = sign({"iss": "zstore-test-issuer", "sub": user, "aud": q.get("service", [""])[0], "exp": now + 3600,
                      "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access})
        body = json.dumps({"token": token, "access_token": token, "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl TestRegistry {
    /// Starts a registry, or returns None (after `require`) when the tools are missing.
    pub fn start(kind: AuthKind, base: &Path) -> Option<TestRegistry> {
        if !require(
            have("docker-registry"),
            "docker-registry (apt package docker-registry)",
        ) {
            return None;
        }
        if kind == AuthKind::Basic
            && !require(have("htpasswd"), "htpasswd (apt package apache2-utils)")
        {
            return None;
        }
        if kind == AuthKind::Token
            && (!require(have("openssl"), "openssl") || !require(have("python3"), "python3"))
        {
            return None;
        }
        let port = free_port();
        let dir = base.join(format!("registry-{port}"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut children = Vec::new();
        let auth = match kind {
            AuthKind::Anonymous => String::new(),
            AuthKind::Basic => {
                let line = run(Command::new("htpasswd").args(["-Bbn", USER, PASS]));
                std::fs::write(dir.join("htpasswd"), line).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: zstore-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            AuthKind::Token => {
                let (key, crt) = (dir.join("token.key"), dir.join("token.crt"));
                run(Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "30",
                        "-subj",
                        "/CN=zstore-test-token-issuer",
                        "-keyout",
                    ])
                    .arg(&key)
                    .arg("-out")
                    .arg(&crt));
                let token_port = free_port();
                std::fs::write(dir.join("tokensrv.py"), TOKEN_SERVER).unwrap();
                let child = Command::new("python3")
                    .arg(dir.join("tokensrv.py"))
                    .arg(token_port.to_string())
                    .arg(&key)
                    .arg(&crt)
                    .args([USER, PASS])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("tokensrv.log")).unwrap())
                    .spawn()
                    .unwrap();
                children.push(child);
                wait_until_answers(&format!("http://127.0.0.1:{token_port}/token"));
                format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: zstore-test-registry\n    issuer: zstore-test-issuer\n    rootcertbundle: {}\n",
                    crt.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nhealth:\n  storagedriver:\n    enabled: false\n{auth}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        children.push(child);
        let reg = TestRegistry {
            host: format!("127.0.0.1:{port}"),
            dir,
            children,
        };
        wait_until_answers(&format!("http://{}/v2/", reg.host));
        Some(reg)
    }

    /// Sum of response body bytes in the access log (combined log format).
    pub fn bytes_sent(&self) -> u64 {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                // ... "GET /v2/... HTTP/1.1" 206 12345 "referer" "agent"
                let after = l.split('"').nth(2)?;
                let mut f = after.split_whitespace();
                let _status = f.next()?;
                f.next()?.parse::<u64>().ok()
            })
            .sum()
    }

    /// Number of requests in the access log.
    pub fn requests(&self) -> usize {
        zstore::registry::client::install_crypto_provider();
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("HTTP/1.1\""))
            .count()
    }
}

/// Waits (bounded) until an HTTP endpoint accepts connections and answers.
fn wait_until_answers(url: &str) {
    zstore::registry::client::install_crypto_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..400 {
        if client.get(url).send().is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{url} never answered");
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
