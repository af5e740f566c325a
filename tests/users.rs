//! `user`, `group` and `rlimits` through the real binary: children of every
//! start method run as the user with its groups and environment, and start
//! with the group's limits, or with drover's original ones (not the raised
//! open-file limit drover gives itself).

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{Drover, TempDir, drover_bin};
use nix::unistd::User;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn nobody() -> User {
    User::from_name("nobody").unwrap().expect("a user `nobody`")
}

/// The value after `name:` on the line `group[0] name: ...`.
fn field(text: &str, group: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{group}[0] {name}:")))
        .unwrap_or_else(|| panic!("no {name} for {group} in:\n{text}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command child that reports its ids, groups, user variables and limits.
const REPORT: &str = r#"grep -E '^(Uid|Gid|Groups):' /proc/self/status; echo "Env: HOME=$HOME USER=$USER LOGNAME=$LOGNAME"; echo "Nofile: $(ulimit -Sn) $(ulimit -Hn)"; echo "Core: $(ulimit -Sc) $(ulimit -Hc)""#;

/// A Python function worker that reports the same.
const PY_REPORT: &str = r#"import os, resource

def limit(r):
    return ' '.join('unlimited' if v == resource.RLIM_INFINITY else str(v) for v in resource.getrlimit(r))

def main():
    print('Uid:', os.getuid())
    print('Gid:', os.getgid())
    print('Groups:', ' '.join(str(g) for g in sorted(os.getgroups())))
    print('Env: HOME=%s USER=%s LOGNAME=%s' % (os.environ.get('HOME'), os.environ.get('USER'), os.environ.get('LOGNAME')))
    print('Nofile:', limit(resource.RLIMIT_NOFILE))
    print('Core:', limit(resource.RLIMIT_CORE), flush=True)
"#;

fn command_group(name: &str, method: &str, extra: &str) -> String {
    format!(
        "[group.{name}]\ncommand = [\"sh\", \"-c\", {REPORT:?}]\nstart_method = \"{method}\"\nrestart = \"never\"\nstart_secs = \"100ms\"\n{extra}\n"
    )
}

/// An interpreter that `nobody` may run: the tests' own (which may live
/// in root's home, under a version manager), else the system's.
fn python_for_nobody() -> Option<String> {
    let nobody = nobody();
    [common::python(), "/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", ""])
                .uid(nobody.uid.as_raw())
                .gid(nobody.gid.as_raw())
                .current_dir("/")
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

fn python_group(name: &str, method: &str, extra: &str) -> String {
    format!(
        "[group.{name}]\npython = \"report:main\"\npython_executable = \"@PY@\"\nstart_method = \"{method}\"\nrestart = \"never\"\nstart_secs = \"100ms\"\n{extra}\n"
    )
}

/// Runs `groups` until each has exited and returns drover's output.
fn run_all(name: &str, groups: &[(String, String)]) -> String {
    let config: String = groups.iter().map(|(_, text)| text.as_str()).collect();
    let d = Drover::launch(name, &config, &[("report.py", PY_REPORT)]);
    for (group, _) in groups {
        d.wait_group_state(group, "exited");
    }
    d.stdout.wait_for("every report", |t| {
        groups
            .iter()
            .all(|(g, _)| t.contains(&format!("{g}[0] Core:")))
    })
}

#[test]
fn children_run_as_the_user_for_every_start_method() {
    if !is_root() {
        eprintln!("skipped: switching users needs root (the config error is tested below)");
        return;
    }
    let nobody = nobody();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let home = nobody.dir.display().to_string();
    let mut groups = Vec::new();
    for m in ["spawn", "fork", "forkserver"] {
        let user = format!("as_{m}");
        groups.push((user.clone(), command_group(&user, m, "user = \"nobody\"")));
        // `group` replaces the primary group; `env` overrides HOME.
        let both = format!("grp_{m}");
        let extra = "user = \"nobody\"\ngroup = \"root\"\nenv = { HOME = \"/custom\" }";
        groups.push((both.clone(), command_group(&both, m, extra)));
    }
    let python = python_for_nobody();
    for m in ["spawn", "fork", "forkserver"] {
        let Some(python) = &python else {
            eprintln!("no python3 that `nobody` can run: function workers not tested");
            break;
        };
        let py = format!("py_{m}");
        let group = python_group(&py, m, "user = \"nobody\"").replace("@PY@", python);
        groups.push((py, group));
    }
    let text = run_all("users", &groups);
    let ids = |id: u32| format!("{id} {id} {id} {id}");
    for m in ["spawn", "fork", "forkserver"] {
        let g = format!("as_{m}");
        assert_eq!(field(&text, &g, "Uid"), ids(uid), "{m}");
        assert_eq!(field(&text, &g, "Gid"), ids(gid), "{m}");
        assert_eq!(field(&text, &g, "Groups"), gid.to_string(), "{m}");
        assert_eq!(
            field(&text, &g, "Env"),
            format!("HOME={home} USER=nobody LOGNAME=nobody"),
            "{m}"
        );
        let g = format!("grp_{m}");
        assert_eq!(field(&text, &g, "Uid"), ids(uid), "{m}");
        assert_eq!(field(&text, &g, "Gid"), ids(0), "{m}");
        assert_eq!(field(&text, &g, "Groups"), "0", "{m}");
        assert_eq!(
            field(&text, &g, "Env"),
            "HOME=/custom USER=nobody LOGNAME=nobody",
            "{m}"
        );
        if python.is_none() {
            continue;
        }
        let g = format!("py_{m}");
        assert_eq!(field(&text, &g, "Uid"), uid.to_string(), "{m}");
        assert_eq!(field(&text, &g, "Gid"), gid.to_string(), "{m}");
        assert_eq!(field(&text, &g, "Groups"), gid.to_string(), "{m}");
        assert_eq!(
            field(&text, &g, "Env"),
            format!("HOME={home} USER=nobody LOGNAME=nobody"),
            "{m}"
        );
    }
}

/// Without root, `user` is a located config error: `drover check` (and
/// `run`) refuse it. As root, the check runs as `nobody`.
#[test]
fn switching_users_without_root_is_a_located_error() {
    let dir = TempDir::new("users-check");
    let config = dir.write(
        "drover.toml",
        "[group.web]\ncommand = [\"sleep\", \"1\"]\nuser = \"root\"\n",
    );
    let mut check = Command::new(drover_bin());
    check.args(["check", &config.display().to_string()]);
    if is_root() {
        let nobody = nobody();
        check.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    }
    let out = check.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let text = format!("{stdout}{stderr}");
    assert!(
        text.contains(
            "cannot run group children as user `root` in [group.web]: only drover running as root can switch users"
        ),
        "{text}"
    );
    assert!(text.contains("drover.toml:3:8"), "{text}");
}

/// This test process's soft open-file limit, lowered below its hard limit
/// so that drover (which inherits it) raises its own and children must be
/// given the original back. Every test of this file may call it.
fn lowered_nofile() -> (u64, u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let wanted = 1000.min(hard);
    if soft != wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).unwrap();
    }
    (wanted, hard)
}

fn shown(limit: u64) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

#[test]
fn children_start_with_the_group_rlimits_or_the_original_limits() {
    let (soft, hard) = lowered_nofile();
    use nix::sys::resource::{Resource, getrlimit};
    let (core_soft, core_hard) = getrlimit(Resource::RLIMIT_CORE).unwrap();
    let limits = "rlimits = { nofile = 512, core = 0 }";
    let mut groups = Vec::new();
    for m in ["spawn", "fork", "forkserver"] {
        let (plain, limited) = (format!("plain_{m}"), format!("lim_{m}"));
        groups.push((plain.clone(), command_group(&plain, m, "")));
        groups.push((limited.clone(), command_group(&limited, m, limits)));
        let (plain, limited) = (format!("pyplain_{m}"), format!("pylim_{m}"));
        groups.push((plain.clone(), python_group(&plain, m, "")));
        groups.push((limited.clone(), python_group(&limited, m, limits)));
    }
    let text = run_all("rlimits", &groups);
    for m in ["spawn", "fork", "forkserver"] {
        for g in [format!("plain_{m}"), format!("pyplain_{m}")] {
            assert_eq!(
                field(&text, &g, "Nofile"),
                format!("{soft} {}", shown(hard)),
                "{g}: drover's original soft limit, not its raised one"
            );
            assert_eq!(
                field(&text, &g, "Core"),
                format!("{} {}", shown(core_soft), shown(core_hard)),
                "{g}"
            );
        }
        for g in [format!("lim_{m}"), format!("pylim_{m}")] {
            assert_eq!(field(&text, &g, "Nofile"), "512 512", "{g}");
            assert_eq!(field(&text, &g, "Core"), "0 0", "{g}");
        }
    }
}

/// A reload that changes `rlimits` replaces the child (a new process with
/// the new limit); one that changes nothing keeps it.
#[test]
fn a_change_of_rlimits_replaces_the_children_on_reload() {
    let config = |nofile: u32| {
        format!(
            "[group.w]\ncommand = [\"sh\", \"-c\", \"echo Nofile: $(ulimit -Sn) $(ulimit -Hn); exec sleep 600\"]\nstart_secs = \"100ms\"\nrlimits = {{ nofile = {nofile} }}\n"
        )
    };
    let d = Drover::start("rlimits-reload", &config(300));
    let first = d.wait_group_state("w", "running");
    d.stdout
        .wait_for("the first limit", |t| t.contains("w[0] Nofile: 300 300"));
    d.dir.write("drover.toml", &config(400));
    d.stdout.wait_for("the replacement's limit", |t| {
        t.contains("w[0] Nofile: 400 400")
    });
    let status = d.wait_status("one running child, replaced", |s| {
        let kids = Drover::children(s, "w");
        kids.len() == 1
            && kids[0]["state"] == "running"
            && kids[0]["pid"].as_i64() != Some(first[0])
    });
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let again = d.wait_group_state("w", "running");
    assert_eq!(
        again[0],
        Drover::children(&status, "w")[0]["pid"].as_i64().unwrap()
    );
}
