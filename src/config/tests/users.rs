//! `user`, `group` and `rlimits`: resolved at load time, every mistake a
//! located error. The user database is the machine's; `nobody` and `root`
//! exist on every Linux system drover supports.

use std::collections::BTreeMap;

use nix::unistd::User;

use super::*;
use crate::config::rlimits::Resource;

/// A group `w` running the test program, with `extra` lines.
fn group(extra: &str) -> String {
    format!("[group.w]\ncommand = [\"PROG\"]\n{extra}\n")
}

/// Validates `text` on `host`.
fn check_on(host: &Host, text: &str) -> Result<Loaded, Failed> {
    let source = SourceFile::new(
        PathBuf::from("/cfg/a.toml"),
        text.replace("PROG", &program()),
    );
    validate(vec![source], true, host, Vec::new())
}

fn root() -> Host {
    Host {
        is_root: true,
        uid: 0,
        gid: 0,
        ..host()
    }
}

fn spec_on(host: &Host, text: &str) -> GroupSpec {
    match check_on(host, text) {
        Ok(loaded) => loaded.config.groups[&GroupName::new("w").unwrap()].clone(),
        Err(failed) => panic!("{failed}"),
    }
}

fn only_error(host: &Host, text: &str) -> (String, String) {
    let failed = check_on(host, text).expect_err("expected an error");
    assert_eq!(failed.diagnostics.len(), 1, "{failed}");
    let d = &failed.diagnostics[0];
    (d.to_string(), d.help().unwrap_or("").to_owned())
}

fn nobody() -> User {
    User::from_name("nobody").unwrap().expect("a user `nobody`")
}

#[test]
fn a_user_resolves_to_its_ids_groups_and_home() {
    let spec = spec_on(&root(), &group("user = \"nobody\""));
    let run_as = spec.user.expect("a user");
    let nobody = nobody();
    assert_eq!(run_as.name, "nobody");
    assert_eq!(
        (run_as.uid, run_as.gid),
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    );
    assert!(run_as.groups.contains(&nobody.gid.as_raw()), "{run_as:?}");
    assert_eq!(run_as.home, nobody.dir);
    assert!(run_as.switch);
    // By number, as an integer or a string of digits: the same user.
    let uid = nobody.uid.as_raw();
    for value in [uid.to_string(), format!("\"{uid}\"")] {
        let by_number = spec_on(&root(), &group(&format!("user = {value}")));
        assert_eq!(by_number.user.unwrap().name, "nobody");
    }
}

#[test]
fn group_overrides_the_primary_group() {
    let spec = spec_on(&root(), &group("user = \"nobody\"\ngroup = \"root\""));
    let run_as = spec.user.unwrap();
    assert_eq!((run_as.uid, run_as.gid), (nobody().uid.as_raw(), 0));
    assert!(run_as.groups.contains(&0), "{run_as:?}");
    // A numeric gid need not exist; a numeric uid without an entry needs one.
    let spec = spec_on(&root(), &group("user = 4000123\ngroup = 4000124"));
    let run_as = spec.user.unwrap();
    assert_eq!(
        (run_as.uid, run_as.gid, &*run_as.name),
        (4000123, 4000124, "4000123")
    );
    let (error, help) = only_error(&root(), &group("user = 4000123"));
    assert!(
        error.ends_with("3:8: error: uid 4000123 has no entry in the user database in [group.w]"),
        "{error}"
    );
    assert!(help.contains("set `group`"), "{help}");
}

#[test]
fn unknown_users_and_groups_are_located_errors() {
    let (error, _) = only_error(&root(), &group("user = \"no-such-user-x\""));
    assert_eq!(
        error,
        "/cfg/a.toml:3:8: error: unknown user `no-such-user-x` in [group.w]"
    );
    let (error, _) = only_error(
        &root(),
        &group("user = \"nobody\"\ngroup = \"no-such-group-x\""),
    );
    assert_eq!(
        error,
        "/cfg/a.toml:4:9: error: unknown group `no-such-group-x` in [group.w]"
    );
    let (error, help) = only_error(&root(), &group("group = \"root\""));
    assert_eq!(
        error,
        "/cfg/a.toml:3:9: error: `group` is set without `user` in [group.w]"
    );
    assert!(help.contains("set `user` too"), "{help}");
    let (error, _) = only_error(&root(), &group("user = -1"));
    assert!(error.contains("`user` in [group.w]"), "{error}");
    let (error, _) = only_error(&root(), &group("user = [\"nobody\"]"));
    assert!(error.contains("expected a name or a numeric id"), "{error}");
}

#[test]
fn only_root_may_switch_users() {
    let (error, help) = only_error(&host(), &group("user = \"nobody\""));
    assert_eq!(
        error,
        "/cfg/a.toml:3:8: error: cannot run group children as user `nobody` in [group.w]: only drover running as root can switch users"
    );
    assert!(help.contains("run drover as root"), "{help}");
    // drover's own user: nothing to switch.
    let nobody = nobody();
    let itself = Host {
        uid: nobody.uid.as_raw(),
        gid: nobody.gid.as_raw(),
        ..host()
    };
    let run_as = spec_on(&itself, &group("user = \"nobody\"")).user.unwrap();
    assert!(!run_as.switch);
}

#[test]
fn rlimits_set_each_resource() {
    let spec = spec_on(
        &root(),
        &group("rlimits = { nofile = 4096, core = 0, nproc = 512, as = \"infinity\" }"),
    );
    let expected: BTreeMap<Resource, Limit> = [
        (Resource::Nofile, Limit::Value(4096)),
        (Resource::Core, Limit::Value(0)),
        (Resource::Nproc, Limit::Value(512)),
        (Resource::As, Limit::Infinity),
    ]
    .into_iter()
    .collect();
    assert_eq!(spec.rlimits, expected);
    // Without root, up to drover's own hard limits.
    let spec = spec_on(&host(), &group("rlimits = { nofile = 4096, core = 0 }"));
    assert_eq!(spec.rlimits.len(), 2);
}

#[test]
fn bad_rlimits_are_located_errors() {
    let (error, help) = only_error(&root(), &group("rlimits = { nofle = 10 }"));
    assert_eq!(
        error,
        "/cfg/a.toml:3:13: error: unknown resource `nofle` in `rlimits` in [group.w]"
    );
    assert_eq!(help, "did you mean `nofile`?");
    let (error, _) = only_error(&root(), &group("rlimits = { core = \"lots\" }"));
    assert!(
        error.contains("expected a non-negative integer or \"infinity\""),
        "{error}"
    );
    let (error, _) = only_error(&root(), &group("rlimits = { core = -1 }"));
    assert!(error.contains("`rlimits.core` in [group.w]"), "{error}");
    let (error, help) = only_error(&root(), &group("rlimits = { nofile = 2000000 }"));
    assert!(
        error.ends_with("above the kernel's maximum of 1048576 open files (fs.nr_open)"),
        "{error}"
    );
    assert!(help.contains("raise fs.nr_open"), "{help}");
    let (error, _) = only_error(&root(), &group("rlimits = { nofile = \"infinity\" }"));
    assert!(error.contains("fs.nr_open"), "{error}");
    let (error, help) = only_error(&host(), &group("rlimits = { nofile = 4097 }"));
    assert!(error.ends_with("`rlimits.nofile` in [group.w] is 4097, above drover's own hard limit (4096), which only root can raise"), "{error}");
    assert!(help.contains("run drover as root"), "{help}");
    let (error, _) = only_error(&host(), &group("rlimits = { core = \"infinity\" }"));
    assert!(
        error.contains("above drover's own hard limit (0)"),
        "{error}"
    );
    let (error, _) = only_error(&root(), &group("rlimits = 5"));
    assert!(error.contains("expected a table"), "{error}");
}
