//! podman 4.3 (Debian 12) pulls what zstore pushes as zstd:chunked partially: the second of
//! two near-identical images transfers only what changed, and the tree podman mounts is the
//! tree zstore checks out. skopeo inspects it too.

mod common;

use std::path::Path;
use std::process::Command;

use common::registry::{self, AuthKind};
use common::*;

/// An isolated podman (its own graphroot, configs and blob-info cache) with partial pulls on.
struct Podman {
    root: std::path::PathBuf,
}

impl Podman {
    fn new(base: &Path, registry: &str) -> Podman {
        let root = base.join("podman");
        for d in ["graph", "run", "tmp", "etc", "bic", "cni"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let r = root.display();
        std::fs::write(
            root.join("etc/storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{r}/run\"\ngraphroot = \"{r}/graph\"\n\n[storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\", ostree_repos = \"\"}}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/registries.conf"),
            format!("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n\n[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/containers.conf"),
            format!("[engine]\nevents_logger = \"file\"\nevents_logfile_path = \"{r}/tmp/events.log\"\ntmp_dir = \"{r}/tmp\"\nimage_copy_tmp_dir = \"{r}/tmp\"\ncgroup_manager = \"cgroupfs\"\n\n[network]\nnetwork_config_dir = \"{r}/cni\"\n"),
        )
        .unwrap();
        std::fs::write(root.join("etc/auth.json"), "{}").unwrap();
        std::fs::create_dir_all("/var/lib/containers/cache").unwrap();
        Podman { root }
    }

    /// Runs podman in a private mount namespace over a private blob-info cache.
    fn run(&self, args: &[&str]) -> (bool, String) {
        let r = &self.root;
        let out = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                r#"mount --bind "$0" /var/lib/containers/cache && exec "$@""#,
            ])
            .arg(r.join("bic"))
            .arg("podman")
            .arg("--root")
            .arg(r.join("graph"))
            .arg("--runroot")
            .arg(r.join("run"))
            .arg("--tmpdir")
            .arg(r.join("tmp"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", r.join("etc/storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", r.join("etc/registries.conf"))
            .env("CONTAINERS_CONF", r.join("etc/containers.conf"))
            .env("REGISTRY_AUTH_FILE", r.join("etc/auth.json"))
            .env("TMPDIR", r.join("tmp"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Mounts an image, snapshots its tree, unmounts it.
    fn tree(&self, image: &str) -> std::collections::BTreeMap<String, Info> {
        // One namespace for mount, snapshot (via a copy) and unmount: the overlay mount lives
        // only inside it, so the tree is copied out with tar.
        let out = self.root.join("tree.tar");
        let script = format!(
            r#"m=$(podman --root {r}/graph --runroot {r}/run --storage-driver overlay image mount {image}) && tar --xattrs --xattrs-include='*' --numeric-owner -C "$m" -cf {out} . ; rc=$?; podman --root {r}/graph --runroot {r}/run --storage-driver overlay image unmount {image} >/dev/null; exit $rc"#,
            r = self.root.display(),
            out = out.display()
        );
        let status = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.root.join("etc/storage.conf"),
            )
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.root.join("etc/registries.conf"),
            )
            .env("CONTAINERS_CONF", self.root.join("etc/containers.conf"))
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "podman image mount: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let dest = self.root.join("tree");
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(&dest).unwrap();
        gnu_tar(&[
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--same-permissions",
            "--numeric-owner",
            "-xf",
            out.to_str().unwrap(),
            "-C",
            dest.to_str().unwrap(),
        ]);
        let (mut s, _) = snapshot(&dest);
        s.remove("");
        s
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Overlay mounts of the graphroot, if any survived, would keep files busy.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for m in mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(self.root.to_str().unwrap_or("/nonexistent")))
        {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

#[test]
fn podman_pulls_zstore_zstd_chunked_partially() {
    if !require(is_root(), "root (podman with an isolated graphroot)")
        || !require(have("podman"), "podman")
        || !require(have("skopeo"), "skopeo")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(AuthKind::Anonymous, tmp.path()) else {
        return;
    };
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 2, 80, 50_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    for tag in ["c0", "c1"] {
        zs.ok(&["pull", &src.source(tag)]);
        zs.ok(&[
            "push",
            &src.source(tag),
            &format!("{}/zstore/by-zstore:{tag}", reg.host),
            "--format",
            "zstd:chunked",
        ]);
    }
    // skopeo reads the manifest and sees the chunked layer.
    let inspect = skopeo(
        tmp.path(),
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{}/zstore/by-zstore:c1", reg.host),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert!(
        manifest["layers"][0]["annotations"]["io.containers.zstd-chunked.manifest-checksum"]
            .is_string(),
        "{manifest}"
    );

    let podman = Podman::new(tmp.path(), &reg.host);
    let (ok, log) = podman.run(&[
        "--log-level=debug",
        "pull",
        &format!("{}/zstore/by-zstore:c0", reg.host),
    ]);
    assert!(ok, "podman pull c0: {log}");
    let before = reg.bytes_sent();
    let (ok, log) = podman.run(&[
        "--log-level=debug",
        "pull",
        &format!("{}/zstore/by-zstore:c1", reg.host),
    ]);
    assert!(ok, "podman pull c1: {log}");
    let c1_bytes = reg.bytes_sent() - before;
    assert!(
        log.contains("Retrieved partial blob"),
        "podman did not pull c1 partially:\n{}",
        log.lines()
            .filter(|l| l.contains("partial"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing = log
        .lines()
        .find(|l| l.contains("Missing") && l.contains("bytes out of"))
        .unwrap_or("")
        .to_string();
    assert!(!missing.is_empty(), "podman reports what it skipped");
    let blob_size = zs.json(&["inspect", &src.source("c1")])["layers"][0]["size"]
        .as_u64()
        .unwrap();
    assert!(
        c1_bytes * 4 < blob_size,
        "podman fetched {c1_bytes} bytes of a {blob_size}-byte layer ({missing})"
    );

    let expected = {
        let dest = tmp.path().join("co");
        zs.ok(&[
            "checkout",
            &src.source("c1"),
            dest.to_str().unwrap(),
            "--mode",
            "copy",
        ]);
        let (mut s, _) = snapshot(&dest);
        s.remove("");
        s
    };
    let mut actual = podman.tree(&format!("{}/zstore/by-zstore:c1", reg.host));
    // podman 4.3's partial pulls leave every mtime at the time of the pull, for skopeo's own
    // zstd:chunked images as well (checked when this test was written): compare the rest.
    let mut expected = expected;
    for info in expected.values_mut().chain(actual.values_mut()) {
        info.mtime = (0, 0);
    }
    assert_same_tree(
        &expected,
        &actual,
        "podman's tree of zstore's zstd:chunked image",
    );
}
